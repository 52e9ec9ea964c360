"""The command line end to end, as a user runs it."""

import json
import os

import numpy as np
import pytest

from conftest import ROOT, run_cli


@pytest.mark.parametrize("args, message", [
    (["--update_ratio=0"], "--update_ratio must be in (0, 1]"),
    (["--update_ratio=1.01"], "--update_ratio must be in (0, 1]"),
    (["--dataset=imagenet"], "unknown data set 'imagenet'"),
    (["--dataset=npz:/no/such/file.npz"], "npz file not found: /no/such/file.npz"),
    (["--initial_samples=3000", "--samples_per_round=1000", "--rounds=3"],
     "the schedule needs 5000 training samples"),
    (["--rounds=abc"], "rounds"),
    (["--rounds=0"], "flag --rounds=0"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--method=sgd"], "flag --method=sgd: value should be one of <dpu|gcpu|lcpu|rpu|pruning|fu|stc>"),
    (["--bias_policy=some"], "flag --bias_policy=some"),
    (["positional"], "unexpected argument"),
    (["--budget_bytes=5000", "--update_ratio=0.01", "--export_tflite"],
     "At most one of (update_ratio, budget_bytes)"),
    (["--resume", "--overwrite"], "At most one of (resume, overwrite) must be True"),
    (["--qat"], "--qat trains against the deployed int8 model; add --export_tflite"),
    (["--flagfile=/no/such.flags"], "cannot read flag file /no/such.flags: no such file"),
    (["--num_classes=1"], "flag --num_classes=1"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, message):
    proc = run_cli(f"--out_dir={tmp_path}/out", *args)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_flagfile_run_prints_progress_and_the_table(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--flagfile=flags/quickstart.flags", "--rounds=2", "--epochs=1",
                   "--initial_samples=200", "--samples_per_round=100", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "round 1 step 2 epoch 1/1" in proc.stdout
    assert "round  train     val    test" in proc.stdout
    doc = json.load(open(out / "metrics.json"))
    assert doc["config"]["dataset"] == "mnist" and doc["config"]["epochs"] == 1
    assert len(doc["rounds"]) == 2
    assert os.path.isfile(out / "round_001" / "model.weights.h5")


@pytest.fixture(scope="module")
def cifar_shaped(tmp_path_factory):
    """An npz shaped like CIFAR-10 (32x32x3 uint8, 10 classes), as the CIFAR flags expect."""
    path = tmp_path_factory.mktemp("npz") / "cifar10.npz"
    rng = np.random.RandomState(0)
    np.savez(path, x_train=rng.randint(0, 256, (2100, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(2100) % 10, x_test=rng.randint(0, 256, (3100, 32, 32, 3),
                                                                dtype=np.uint8),
             y_test=np.arange(3100) % 10)
    return path


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "flags"))))
def test_every_flag_file_parses_and_validates(name, cifar_shaped, tmp_path):
    # --dry_run checks the data and the folder too: CIFAR's settings get a
    # CIFAR-shaped file, and two rounds of it.
    cifar = [f"--dataset=npz:{cifar_shaped}", "--rounds=2"] if "cifar" in name else []
    proc = run_cli(f"--flagfile=flags/{name}", *cifar, f"--out_dir={tmp_path}/run", "--dry_run")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert 0 < config["update_ratio"] <= 1
    assert config["contribution_mix"] is not None and config["lr_schedule"] != "auto"


def test_later_flags_override_the_flag_file():
    proc = run_cli("--flagfile=flags/reference_mnist.flags", "--method=rpu", "--seed=2",
                   "--dry_run")
    config = json.loads(proc.stdout)
    assert (config["method"], config["seed"], config["epochs"]) == ("rpu", 2, 30)
    assert config["reinit"] == "off"


@pytest.mark.parametrize("value", ["quickstart", "flags/quickstart.flags", "quickstart.flags"])
def test_shipped_flag_files_are_found_by_name_outside_a_checkout(value, tmp_path):
    # From another folder, as an installed tf-dpu-train runs in Colab.
    proc = run_cli(f"--flagfile={value}", f"--out_dir={tmp_path}/run", "--dry_run",
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rounds"] == 5
