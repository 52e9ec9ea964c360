"""Every flag a user can reach is set by some test, and each training flag reaches the run."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# The product's command lines (the benchmarks' flags size their own runs).
COMMAND_LINES = ("tf_dpu/train.py", "tflite_edge/patch.py", "tflite_edge/fleet.py",
                 "tflite_edge/check.py", "tflite_edge/cli.py")


def _defined(path):
    source = open(os.path.join(ROOT, path)).read()
    return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))


def _set_by_tests():
    text = ""
    for path in glob.glob(os.path.join(ROOT, "tests", "*.py")):
        if os.path.basename(path) != "test_flags.py":
            text += open(path).read()
    return text


@pytest.mark.parametrize("path", COMMAND_LINES)
def test_every_command_line_flag_is_set_by_some_test(path):
    text = _set_by_tests() + "".join(f"--{flag}=" for flag in TRAINING_VALUES)
    missing = sorted(f for f in _defined(path) if not re.search(rf"--{f}\b", text))
    assert not missing, f"{path}: no test sets {', '.join('--' + f for f in missing)}"


# Each training flag, a value other than its default, and what the resolved
# run settings must then hold (None: the value itself).
TRAINING_VALUES = {
    "adam_epsilon": ("1e-07", 1e-07), "augment": ("crop_flip", None),
    "batch_size": ("32", 32), "bias_policy": ("masked", None), "bn_epsilon": ("0.001", 0.001),
    "bn_momentum": ("0.5", 0.5), "budget_bytes": ("5000", 5000),
    "checkpoint_seconds": ("7.5", 7.5), "contribution_mix": ("0.25", 0.25),
    "dataset": ("digits", None), "deterministic": ("false", False), "epochs": ("3", 3),
    "export_tflite": ("true", True), "fu_init": ("diff_init", None),
    "initial_deployment": ("partial", None), "initial_samples": ("200", 200),
    "initializer": ("torch", None), "int8_bounds": ("false", False),
    "int8_headroom": ("2", 2.0), "iterative": ("true", True),
    "iterative_decay": ("0.7", 0.7), "iterative_epochs": ("4", 4),
    "layer_preselect": ("0.5", 0.5), "learning_rate": ("0.02", 0.02),
    "logical_cpus": ("2", 2), "lr_gamma": ("0.5", 0.5), "lr_schedule": ("cosine", None),
    "max_update_ratio": ("0.3", 0.3), "method": ("lcpu", None), "model": ("cnn", None),
    "momentum": ("0.8", 0.8), "num_classes": ("12", 12), "optimizer": ("sgd", None),
    "out_dir": ("OUT", None), "overwrite": ("true", True), "qat": ("true", True),
    "rank": ("per_bit", None), "reinit": ("periodic", None),
    "reinit_compare": ("start", None), "reinit_period": ("3", 3), "resume": ("true", True),
    "rounds": ("4", 4), "samples_per_round": ("150", 150), "seed": ("9", 9),
    "sign_key": ("KEY", None), "single_step_epochs": ("5", 5), "strategy": ("mirrored", None),
    "target_confidence": ("0.8", 0.8), "target_gap": ("1.5", 1.5),
    "target_search_steps": ("2", 2), "target_judge_share": ("0.4", 0.4), "tflite_io": ("uint8", None),
    "update_ratio": ("0.05", 0.05), "value_grid": ("ternary", None), "patch_format": ("3", 3), "validation_samples": ("100", 100),
    "weight_decay": ("0.001", 0.001), "width_multiplier": ("0.5", 0.5),
}
# Flags of the command line itself, not of the run (each has its own test).
COMMAND_ONLY = {"dry_run", "quiet", "verbose"}
# Some values only make sense together (checked by the run's own validation).
_NEEDS = {"qat": ["--export_tflite"], "budget_bytes": ["--export_tflite"],
          "sign_key": ["--export_tflite"], "rank": ["--export_tflite"],
          "tflite_io": ["--export_tflite"], "patch_format": ["--export_tflite"], "logical_cpus": ["--strategy=mirrored"],
          "resume": [], "iterative_decay": ["--iterative"], "iterative_epochs": ["--iterative"],
          "fu_init": ["--method=fu"], "reinit": ["--reinit_period=2"],
          "reinit_period": ["--reinit=periodic"],
          "target_confidence": ["--target_gap=1"], "max_update_ratio": ["--target_gap=1"],
          "target_search_steps": ["--target_gap=1"], "target_judge_share": ["--target_gap=1"], "lr_gamma": ["--lr_schedule=step"]}


def test_the_table_names_every_training_flag():
    assert _defined("tf_dpu/train.py") == set(TRAINING_VALUES) | COMMAND_ONLY


def _parsed(args):
    from absl import flags  # pylint: disable=import-outside-toplevel
    from tf_dpu import train  # pylint: disable=import-outside-toplevel
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", *args])
    try:
        return train.config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag", sorted(TRAINING_VALUES))
def test_each_training_flag_reaches_the_run_settings(flag, tmp_path):
    given, expected = TRAINING_VALUES[flag]
    given = {"OUT": str(tmp_path / "out"), "KEY": str(tmp_path / "k.pem")}.get(given, given)
    expected = given if expected is None else expected
    config = _parsed([f"--{flag}={given}", *_NEEDS.get(flag, [])])
    assert getattr(config, flag) == expected
    default = getattr(_parsed([]), flag)
    assert default != expected, f"--{flag}={given} is its default: the check would not fail"


def test_a_dry_run_prints_the_resolved_settings_of_the_flags(tmp_path):
    # Through the real command line once: the flags that decide the model's
    # resolution (a BatchNorm model, exported) come out resolved.
    done = subprocess.run([sys.executable, "-m", "tf_dpu.train", "--dry_run",
                           "--dataset=digits", "--validation_samples=100", "--rounds=2",
                           "--initial_samples=200", "--samples_per_round=100",
                           "--model=ds_cnn", "--export_tflite", "--tflite_io=uint8",
                           "--lr_gamma=0.5", "--optimizer=sgd", "--momentum=0.8",
                           "--weight_decay=0.001", f"--out_dir={tmp_path}/run"],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout[done.stdout.index("{"):])
    assert printed["bias_policy"] == "frozen" and printed["tflite_io"] == "uint8"
    assert (printed["lr_gamma"], printed["optimizer"], printed["momentum"],
            printed["weight_decay"]) == (0.5, "sgd", 0.8, 0.001)
    assert printed["bn_momentum"] == 0.9 and printed["bn_epsilon"] == 1e-5
    assert not os.path.exists(tmp_path / "run")
