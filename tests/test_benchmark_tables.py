"""The benchmark tables refuse comparisons that change more than one thing."""

import pytest

from benchmarks.tables import check_one_protocol, mean_se, standard_error
from tf_dpu import RunConfig


def _config(**changes):
    return RunConfig(**changes).resolved().to_dict()


def test_methods_ratios_and_seeds_may_differ():
    check_one_protocol([_config(method="fu"), _config(method="dpu", update_ratio=0.05, seed=2),
                        _config(method="gcpu"), _config(method="rpu", out_dir="x",
                                                        export_tflite=True, int8_bounds=False)])


@pytest.mark.parametrize("changes, setting", [
    ({"export_tflite": True, "out_dir": "x"}, "trains_in_int8_bounds"),
    ({"epochs": 20}, "epochs"),
    ({"layer_preselect": 0.65}, "layer_preselect"),
])
def test_a_second_difference_is_refused_by_name(changes, setting):
    with pytest.raises(ValueError, match=f"runs differ in {setting}"):
        check_one_protocol([_config(method="fu"), _config(method="dpu", **changes)])


def test_mean_and_standard_error():
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)
    assert mean_se([1.0, 3.0]) == "+2.00 ± 1.00" and mean_se([]) == "n/a"
