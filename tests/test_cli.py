"""The command line end to end, as a user runs it."""

import json
import os

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
    (["--no_such_flag=1"], "no_such_flag"),
    (["--method=sgd"], "--method='sgd' is not one of"),
    (["positional"], "unexpected argument"),
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


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "flags"))))
def test_every_flag_file_parses_and_validates(name):
    proc = run_cli(f"--flagfile=flags/{name}", "--dry_run")
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
