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
