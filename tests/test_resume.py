"""A run killed at any point and resumed gives what an uninterrupted run gives."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tf_dpu import ConfigError, RunConfig
from tf_dpu.models import build_model
from tf_dpu.outputs import load_weights
from tf_dpu.rounds import run

SETTINGS = dict(rounds=4, initial_samples=100, samples_per_round=100, epochs=3, batch_size=64,
                seed=7, method="dpu", initial_deployment="partial", export_tflite=True,
                checkpoint_seconds=0)


class Killed(Exception):
    pass


def _files(out):
    """Everything a run writes that must not depend on being interrupted."""
    doc = json.load(open(os.path.join(out, "metrics.json")))
    for record in doc["rounds"]:
        for timing in ("seconds", "training_seconds", "export_seconds"):
            record.pop(timing, None)
    doc["config"].pop("resume")
    doc["config"].pop("out_dir")
    blobs = {}
    for folder in sorted(f for f in os.listdir(out) if f.startswith("round_")):
        for name in ("model.tflite", "update.patch"):
            path = os.path.join(out, folder, name)
            if os.path.exists(path):
                blobs[f"{folder}/{name}"] = open(path, "rb").read()
    return doc, blobs


@pytest.fixture(scope="module")
def uninterrupted(small_mnist, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("whole") / "run")
    run(RunConfig(out_dir=out, **SETTINGS), progress=None, data=small_mnist)
    return out


@pytest.mark.parametrize("kill_at", [
    "round 1: 200 training samples",      # a round's start
    "round 2 step 2 epoch 2/3",           # inside step 2: resumes after its epoch 1
    "round 1 step 1 epoch 3/3",           # a finished step 1, restored on resume
    "round 3: int8 test",                 # after the files, before metrics.json
])
def test_resume_after_an_interruption_matches(small_mnist, uninterrupted, tmp_path, kill_at):
    out = str(tmp_path / "run")

    def progress(line):
        if line.startswith(kill_at):
            raise Killed(line)

    with pytest.raises(Killed):
        run(RunConfig(out_dir=out, **SETTINGS), progress=progress, data=small_mnist)
    lines = []
    resumed = run(RunConfig(out_dir=out, resume=True, **SETTINGS), progress=lines.append,
                  data=small_mnist)
    assert len(resumed.rounds) == SETTINGS["rounds"]
    if "step" in kill_at:   # it picked up inside the round, not at its start
        assert any("resumed after epoch" in line for line in lines), lines[:5]
    assert _files(out) == _files(uninterrupted)
    model = build_model("mlp", small_mnist.input_shape, 10, seed=0)
    for r in range(SETTINGS["rounds"]):
        a = load_weights(model, os.path.join(out, f"round_{r:03d}"))
        b = load_weights(model, os.path.join(uninterrupted, f"round_{r:03d}"))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_refuses_other_settings(small_mnist, uninterrupted):
    with pytest.raises(ConfigError, match="another --update_ratio"):
        run(RunConfig(out_dir=uninterrupted, resume=True, **dict(SETTINGS, update_ratio=0.02)),
            progress=None, data=small_mnist)


def test_a_killed_process_resumes_to_the_same_files(tmp_path):
    """A real SIGKILL through the command line, then --resume."""
    args = [sys.executable, "-m", "tf_dpu.train", "--flagfile=flags/quickstart.flags",
            "--rounds=3", "--epochs=2", "--initial_samples=200", "--samples_per_round=200",
            "--export_tflite", "--checkpoint_seconds=0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    whole = str(tmp_path / "whole")
    assert subprocess.run(args + [f"--out_dir={whole}"], cwd=ROOT, env=env,
                          capture_output=True).returncode == 0
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(args + [f"--out_dir={killed}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("round 2 step 2 epoch 1/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(json.load(open(os.path.join(killed, "metrics.json")))["rounds"]) == 2
    resumed = subprocess.run(args + [f"--out_dir={killed}", "--resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "resumed after epoch" in resumed.stdout
    assert _files(killed) == _files(whole)


def test_a_target_gap_round_resumes_inside_its_search(small_mnist, tmp_path):
    """The size search fine-tunes several candidates; killed in one, it resumes to the same run."""
    settings = dict(SETTINGS, initial_deployment="full", target_gap=0.0, max_update_ratio=0.05,
                    target_search_steps=2)
    whole = str(tmp_path / "whole")
    run(RunConfig(out_dir=whole, **settings), progress=None, data=small_mnist)
    out = str(tmp_path / "run")
    seen = []

    def progress(line):
        if line.startswith("round 1 step 2 (") and "epoch 2/3" in line:
            seen.append(line)
            if len(seen) == 2:       # inside the second candidate
                raise Killed(line)

    with pytest.raises(Killed):
        run(RunConfig(out_dir=out, **settings), progress=progress, data=small_mnist)
    lines = []
    run(RunConfig(out_dir=out, resume=True, **settings), progress=lines.append, data=small_mnist)
    assert any("resumed after epoch" in line for line in lines)
    assert _files(out) == _files(whole)
