"""The training loop under tf.distribute: two logical CPUs, and two workers on loopback.

Tolerances against a single device. Replicas sum the gradients of their batch
slices in another order than one device sums the batch, so numbers differ by
float rounding:

* one step 1 from the same weights: contributions within 1e-5 relative, and
  the same top-1 % selection;
* whole runs: rounding decides near-ties between epochs in the validation
  pick, and the rounds that follow start from different models. So a run
  must select exactly as many elements every round, with at least 75 % of
  the changed kernel elements in common, and land within 3 points of accuracy.
"""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tf_dpu.config import METHODS

from conftest import ROOT

_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
_TIMEOUT = 600


def _weights(run_dir, index):
    """A round's saved weights, in a fixed order, keyed by their path in the file."""
    out = {}
    with h5py.File(os.path.join(run_dir, f"round_{index:03d}", "model.weights.h5")) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)["rounds"]


def _assert_matches_single_device(single, distributed):
    """Same budgets and counts; selections and accuracies within the stated tolerance."""
    a, b = _metrics(single), _metrics(distributed)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for key in ("selected_elements", "sent", "full_round"):
            assert ra[key] == rb[key], (ra["round"], key)
        if not ra["full_round"]:
            assert ra["updated_elements"] == rb["updated_elements"], ra["round"]
        for key in ("val_accuracy", "test_accuracy"):
            assert abs(ra[key] - rb[key]) <= 0.03, (ra["round"], key)
    for r in range(1, len(a)):
        if a[r]["full_round"]:
            continue
        pa, pb = _weights(single, r - 1), _weights(distributed, r - 1)
        ca, cb = _weights(single, r), _weights(distributed, r)
        kernels = [name for name in ca if ca[name].ndim >= 2]
        common = sum(np.count_nonzero((ca[k] != pa[k]) & (cb[k] != pb[k])) for k in kernels)
        assert common >= 0.75 * a[r]["updated_elements"], r


def test_one_step_gives_the_same_contributions_and_selection(mirrored_runs):
    with open(mirrored_runs / "contribution_check.json") as f:
        check = json.load(f)
    assert check["selected"] == [check["budget"]] * 2
    assert check["common"] == check["budget"]
    assert check["contribution_relative_error"] < 1e-5


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mirrored_runs.py"), str(out)],
                   env=_ENV, check=True, timeout=_TIMEOUT, capture_output=True)
    return out


def test_replicas_hold_identical_weights_and_contributions(mirrored_runs):
    with open(mirrored_runs / "replica_check.json") as f:
        check = json.load(f)
    assert check["replicas"] == 2
    assert check["weights_identical"] and check["contribution_identical"]
    assert check["frozen_elements_moved"] == 0
    assert check["free_elements_moved"] > 1000


@pytest.mark.parametrize("method", METHODS)
def test_mirrored_matches_one_device(mirrored_runs, method):
    _assert_matches_single_device(str(mirrored_runs / method / "default"),
                                  str(mirrored_runs / method / "mirrored"))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_FLAGS = ["--dataset=digits", "--model=mlp", "--rounds=3", "--initial_samples=300",
          "--samples_per_round=200", "--epochs=2", "--batch_size=64", "--seed=4",
          "--export_tflite", "--quiet"]


def test_two_workers_on_loopback_match_one_device(tmp_path):
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "tf_dpu.train", *_FLAGS, f"--out_dir={single}"],
                   env=_ENV, cwd=ROOT, check=True, timeout=_TIMEOUT, capture_output=True)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    multi = tmp_path / "multi"
    workers = []
    for index in range(2):
        env = dict(_ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "tf_dpu.train", *_FLAGS, "--strategy=multi_worker",
             f"--out_dir={multi}"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        for worker in workers:
            output, _ = worker.communicate(timeout=_TIMEOUT)
            assert worker.returncode == 0, output[-2000:]
    finally:
        for worker in workers:
            worker.kill()
    _assert_matches_single_device(str(single), str(multi))
    # Worker 1 kept its own copy: bit-identical weights and byte-identical
    # int8 files and patches, so the two replicas never diverged.
    copy = multi / "workers" / "1"
    for r in range(3):
        mine, chief = _weights(str(copy), r), _weights(str(multi), r)
        for name in chief:
            assert np.array_equal(mine[name].view(np.uint32), chief[name].view(np.uint32))
        for name in ("model.tflite", "update.patch"):
            path = multi / f"round_{r:03d}" / name
            if path.exists():
                assert path.read_bytes() == (copy / f"round_{r:03d}" / name).read_bytes()


def test_multi_worker_without_a_cluster_is_one_line(tmp_path):
    env = dict(_ENV)
    env.pop("TF_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "tf_dpu.train", *_FLAGS,
                             "--strategy=multi_worker", f"--out_dir={tmp_path}"],
                            env=env, cwd=ROOT, timeout=_TIMEOUT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --strategy=multi_worker needs TF_CONFIG with a cluster "
        "(see tf.distribute.MultiWorkerMirroredStrategy)"]
