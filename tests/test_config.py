import pytest

from tf_dpu.config import RunConfig
from tf_dpu.errors import ConfigError


@pytest.mark.parametrize("changes, message", [
    ({"update_ratio": 0.0}, "update_ratio must be in (0, 1]"),
    ({"update_ratio": 1.5}, "update_ratio must be in (0, 1]"),
    ({"update_ratio": float("nan")}, "update_ratio"),
    ({"method": "magic"}, "--method='magic' is not one of"),
    ({"model": "resnet21"}, "--model='resnet21'"),
    ({"rounds": 0}, "--rounds must be a positive integer"),
    ({"epochs": -1}, "--epochs must be a positive integer"),
    ({"learning_rate": 0.0}, "--learning_rate"),
    ({"bias_policy": "some"}, "--bias_policy"),
    ({"reinit": "periodic"}, "needs --reinit_period"),
    ({"method": "gcpu", "contribution_mix": 0.3}, "fixes --contribution_mix to 1"),
    ({"method": "rpu", "iterative": True}, "--iterative applies"),
    ({"contribution_mix": 2.0}, "--contribution_mix must be in [0, 1]"),
    ({"strategy": "tpu"}, "--strategy='tpu' is not one of default, mirrored, multi_worker"),
    ({"logical_cpus": 2}, "--logical_cpus splits the CPU for --strategy=mirrored only"),
    ({"strategy": "mirrored", "logical_cpus": -1}, "--logical_cpus must be in [0, 64]"),
])
def test_bad_settings_raise_one_line(changes, message):
    with pytest.raises(ConfigError) as e:
        RunConfig(**changes).resolved()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_resolution_per_method():
    assert RunConfig(method="gcpu").resolved().contribution_mix == 1.0
    assert RunConfig(method="lcpu").resolved().contribution_mix == 0.0
    assert RunConfig(method="dpu").resolved().contribution_mix == 0.5
    assert RunConfig(method="dpu", initial_deployment="partial").resolved().reinit == "doubling"
    # After a fully deployed round 0, a restart from w0 would discard the
    # device's trained model.
    assert RunConfig(method="dpu", initial_deployment="full").resolved().reinit == "off"
    assert RunConfig(method="gcpu").resolved().reinit == "off"
    assert RunConfig(optimizer="sgd").resolved().lr_schedule == "cosine"
    assert RunConfig().resolved().lr_schedule == "thirds"
    assert RunConfig(epochs=7).resolved().single_step_epochs == 14


@pytest.mark.parametrize("ratio, total, expected", [
    (0.01, 266200, 2662), (0.005, 266200, 1331), (0.01, 101, 2), (1.0, 10, 10),
    (0.001, 10, 1),
])
def test_budget_is_ceil_k_times_i(ratio, total, expected):
    assert RunConfig(update_ratio=ratio).budget(total) == expected


def test_a_moved_run_folder_or_another_strategy_still_resumes():
    saved = RunConfig(out_dir="/old/place").to_dict()
    moved = RunConfig(out_dir="/new/place", strategy="mirrored", logical_cpus=2, resume=True)
    assert moved.same_run(saved) is None
    assert RunConfig(out_dir="/new/place", seed=9).same_run(saved) == "seed"


def test_a_run_saved_before_a_setting_existed_resumes_at_that_settings_default():
    saved = RunConfig(out_dir="/run").to_dict()
    del saved["value_grid"]   # a folder written before --value_grid existed
    assert RunConfig(out_dir="/run").same_run(saved) is None
    assert RunConfig(out_dir="/run", value_grid="ternary").same_run(saved) == "value_grid"
    del saved["seed"]   # missing, but asked for at a value other than its default
    assert RunConfig(out_dir="/run", seed=9).same_run(saved) == "seed"
