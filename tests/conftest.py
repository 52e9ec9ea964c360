"""Shared fixtures: small real data, so tests stay fast and need no network."""

import functools
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_dpu  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tf_dpu.data import Dataset, load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Patches carry their release time: fixed here (as reproducible builds fix
# timestamps) so that two runs of the same work write the same bytes. The
# release-time and expiry tests pass their own times.
os.environ["SOURCE_DATE_EPOCH"] = "1790000000"


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

# Where the suite must be complete (CI sets this in .ci/run), a tool the README
# says is tested (tflite-micro, OpenSSL, the sanitizers, nbclient, the JDK)
# that is missing fails the test instead of skipping it.
REQUIRE_TOOLS = os.environ.get("DPU_REQUIRE_TOOLS") == "1" or os.environ.get("CI") == "true"


def missing_tool(what: str) -> None:
    """Skips the calling test, or fails it where every tool must be present."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{what} is missing, and DPU_REQUIRE_TOOLS/CI says every tested tool "
                    "must be installed (.ci/run installs them)")
    pytest.skip(f"{what} is not installed")


def require_module(name: str, what: str):
    """`pytest.importorskip`, but a failure where every tool must be present."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_tool(what)
    return None


def build_c(target: str, folder) -> str:
    """Builds one target of tflite_edge/c/Makefile into `folder`; returns its path.

    A compiler error is a failure; a missing library or runtime (OpenSSL, the
    sanitizers) is `missing_tool`.
    """
    proc = subprocess.run(["make", "-s", "-C", C_DIR, f"OUT={folder}", f"{folder}/{target}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stderr.lower()
        if "openssl" in text or "lcrypto" in text:
            missing_tool("OpenSSL (libssl-dev)")
        if "asan" in text or "ubsan" in text or "sanitize" in text:
            missing_tool("the compiler's AddressSanitizer/UBSan runtime")
    assert proc.returncode == 0, proc.stderr
    return str(folder / target)


def stack_depths(callgraph: str):
    """From gcc's -fcallgraph-info=su output: a function giving the stack bytes of
    the deepest call chain from an entry point (the applier must not recurse)."""
    import re  # pylint: disable=import-outside-toplevel
    frame = {t.split(":")[-1]: int(b) for t, b in re.findall(
        r'node: \{ title: "([^"]+)" label: "[^"]*?\\n(\d+) bytes', callgraph)}
    calls = {}
    for caller, callee in re.findall(r'sourcename: "([^"]+)" targetname: "([^"]+)"', callgraph):
        calls.setdefault(caller.split(":")[-1], set()).add(callee.split(":")[-1])

    def deepest(name, seen=()):
        assert name not in seen, "the applier must not recurse"
        below = [deepest(c, seen + (name,)) for c in calls.get(name, ()) if c in frame]
        return frame[name] + max(below, default=0)
    return deepest


@pytest.fixture(scope="session")
def c_applier(tmp_path_factory):
    """The C applier's host driver, built with the project's strict warning flags."""
    return build_c("dpu_apply", tmp_path_factory.mktemp("c"))


@pytest.fixture(scope="session")
def c_signed_applier(tmp_path_factory):
    """The host driver with OpenSSL's Ed25519 plugged into the signature callback."""
    return build_c("dpu_apply_ed25519", tmp_path_factory.mktemp("c_ed25519"))


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


def round_folders(result):
    """The `round_NNN` folders of a run, in round order."""
    return [os.path.join(result.out_dir, f"round_{r['round']:03d}") for r in result.rounds]


def patches_in_formats(files, versions):
    """For each round whose file changed: ({version: patch}, {version: its records}).

    Every patch is checked to carry its version and to rebuild the round's
    file from the last one.
    """
    from tflite_edge import patch_format  # pylint: disable=import-outside-toplevel
    from tflite_edge.apply import apply_patch  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    for r in range(1, len(files)):
        base, target = files[r - 1], files[r]
        if base == target:
            continue
        patches = {v: create_patch(base, target, r, version=v) for v in versions}
        for version, patch in patches.items():
            assert patch_format.decode(patch).header.version == version
            assert apply_patch(base, patch, allow_unsigned=True) == target
        yield patches, {v: patch_format.decode(patch, base).records
                        for v, patch in patches.items()}


@pytest.fixture(scope="session")
def exported_files(exported_run):
    """The bytes of `exported_run`'s int8 file after every round."""
    out = []
    for folder in round_folders(exported_run[0]):
        with open(os.path.join(folder, "model.tflite"), "rb") as f:
            out.append(f.read())
    return out


ANDROID_DIR = os.path.join(ROOT, "tflite_edge", "android")
JAR = os.path.join(ANDROID_DIR, "build", "dpu-patch.jar")


@pytest.fixture(scope="session")
def jar():
    """The JVM applier's jar, built offline by Maven as `make android` does (JUnit runs too)."""
    import shutil  # pylint: disable=import-outside-toplevel
    if not (shutil.which("mvn") and shutil.which("java")):
        missing_tool("the JDK and Maven")
    proc = subprocess.run(["mvn", "-o", "-q", "-f", os.path.join(ANDROID_DIR, "pom.xml"),
                           "package"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return JAR


def run_jar(jar_path, *args, timeout=120):
    """`java -jar dpu-patch.jar ARGS`; returns the process."""
    return subprocess.run(["java", "-jar", jar_path, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
