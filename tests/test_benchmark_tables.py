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


def _run(mode, seed, accuracy, sent, setting="s"):
    return {"setting": setting, "mode": mode, "seed": seed, "test_accuracy": accuracy,
            "device_accuracy": accuracy, "sent_bytes": sent}


def test_target_bytes_are_compared_with_the_cheapest_fixed_k_that_does_as_well():
    from benchmarks.bytes_figures import gaps_and_bytes, key_figures
    runs = []
    for seed in (1, 2):
        runs += [_run("fu same_init", seed, [0.5, 0.90, 0.90], [1000] * 3),
                 _run("fu last_round", seed, [0.5, 0.91, 0.91], [1000] * 3),
                 _run("dpu k=1%", seed, [0.5, 0.88, 0.88], [1000, 10, 10]),    # -3 points
                 _run("dpu k=5%", seed, [0.5, 0.905, 0.905], [1000, 50, 50]),  # -0.5
                 _run("dpu k=20%", seed, [0.5, 0.91, 0.91], [1000, 200, 200]),  # 0
                 _run("target 0.5", seed, [0.5, 0.905, 0.905], [1000, 25, 25])]
    gap, sent = gaps_and_bytes(runs, "s", "dpu k=5%")[0]
    assert gap == pytest.approx(-0.5) and sent == 100     # against the better FU, rounds 1+
    figures = key_figures(runs)
    assert figures["target_gap_test_points"] == pytest.approx(-0.5)
    assert figures["bytes_target_vs_fixed_k"] == pytest.approx(0.5)   # 50 / 100 (k = 5 %)


def test_the_entropy_bound_of_a_real_patch():
    import numpy as np
    from benchmarks.patch_size import entropy_bound
    from hostile import TINY_MODEL
    from tflite_edge.create import create_patch
    from tflite_edge.model_file import ModelFile
    base = open(TINY_MODEL, "rb").read()
    view = ModelFile(base)
    target = bytearray(base)
    rng = np.random.RandomState(0)
    buffer = max((view.buffers[t.buffer] for t in view.tensors if t.type == 9
                  and view.buffers[t.buffer].length > 0), key=lambda b: b.length)
    for i in rng.choice(buffer.length, buffer.length // 10, replace=False):
        target[buffer.offset + i] = (target[buffer.offset + i] + rng.randint(1, 5)) % 256
    patch = create_patch(base, bytes(target), 1)
    e = entropy_bound(patch)
    coded = sum(c for c, _ in e["parts"].values())
    assert len(patch) == pytest.approx(e["fixed"] + coded / 8, abs=len(e["parts"]) + 1)
    assert 1.0 <= len(patch) / e["bound"] < 1.3


def test_modules_the_tests_import_define_no_flags():
    # A benchmark module that defines absl flags at import clashes with the
    # next one that does (both have --out), and benchmarks.__main__ imports
    # bytes and timing: only their command lines may define flags.
    import importlib  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel
    for name in ("benchmarks.bytes_figures", "benchmarks.user_model", "benchmarks.fuzz",
                 "benchmarks.tables", "benchmarks.patch_size", "benchmarks.jvm",
                 "benchmarks.bytes", "benchmarks.timing", "benchmarks.throughput",
                 "benchmarks.scaling"):
        importlib.import_module(name)
    defined = flags.FLAGS.flags_by_module_dict()
    assert not [module for module in defined if module.startswith("benchmarks")]


def test_scaling_models_store_every_layer_and_patch_with_every_applier():
    # 100k has two 256x256 kernels: drawn from one seed, the converter stored
    # them once and re-quantizing a layer on its own was refused.
    from benchmarks import scaling  # pylint: disable=import-outside-toplevel
    (row,) = scaling.measure(("100k",), (0.01,))
    assert row["model_bytes"] > row["parameters"]
    assert 0 < row["patch_bytes"] < 0.05 * row["model_bytes"]
    assert row["apply_c_s"] > 0 and (row["apply_jvm_s"] or 0) >= 0
