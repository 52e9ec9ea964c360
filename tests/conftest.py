"""Shared fixtures: small real data, so tests stay fast and need no network."""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_dpu  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tf_dpu.data import Dataset, load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _mnist():
    return load_dataset("mnist", 300, seed=1)


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    """The bundled 5,000 real MNIST digits (4,000 pool, 300 val, 700 test)."""
    return _mnist()


@pytest.fixture(scope="session")
def small_mnist() -> Dataset:
    """A 600-sample pool of the real digits with a 200-sample validation split."""
    d = _mnist()
    return Dataset("mnist-small", d.x_train[:600], d.y_train[:600], d.x_val[:200],
                   d.y_val[:200], d.x_test[:300], d.y_test[:300], d.num_classes)


@pytest.fixture(scope="session")
def small_images() -> Dataset:
    """Tiny 8x8x3 images from the digits set, for the BatchNorm models."""
    d = load_dataset("digits", 100, seed=0)
    rgb = lambda x: np.repeat(x, 3, axis=-1)  # noqa: E731
    return Dataset("digits-rgb", rgb(d.x_train[:300]), d.y_train[:300], rgb(d.x_val),
                   d.y_val, rgb(d.x_test[:200]), d.y_test[:200], d.num_classes)


def run_cli(*args, cwd=ROOT, timeout=600):
    """Runs `python -m tf_dpu.train` with the given flags; returns the process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tf_dpu.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


C_DIR = os.path.join(ROOT, "tflite_edge", "c")


@pytest.fixture(scope="session")
def c_applier(tmp_path_factory):
    """The C applier's host driver, built with the project's strict warning flags."""
    out = tmp_path_factory.mktemp("c")
    subprocess.run(["make", "-s", "-C", C_DIR, f"OUT={out}"], check=True)
    return str(out / "dpu_apply")


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """A 4-round DPU run on real digits with the int8 export on (a patch per round)."""
    from tf_dpu import RunConfig
    from tf_dpu.rounds import run
    data = _mnist()
    small = Dataset("mnist-small", data.x_train[:800], data.y_train[:800], data.x_val[:200],
                    data.y_val[:200], data.x_test[:300], data.y_test[:300], data.num_classes)
    out = tmp_path_factory.mktemp("export") / "run"
    config = RunConfig(rounds=4, initial_samples=200, samples_per_round=200, epochs=3,
                       batch_size=64, seed=5, update_ratio=0.01, export_tflite=True,
                       out_dir=str(out))
    return run(config, progress=None, data=small), small
