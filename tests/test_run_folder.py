"""Run folders are never mixed or lost, and bad data is refused before anything is written."""

import hashlib
import os
import subprocess

import numpy as np
import pytest

from conftest import missing_tool, run_cli
from tf_dpu import RunConfig
from tf_dpu.errors import ConfigError, DataError

TINY = ["--dataset=digits", "--model=mlp", "--initial_samples=100", "--samples_per_round=100",
        "--epochs=1", "--batch_size=64", "--quiet"]


def _digests(folder):
    """Every file of a folder and its MD5 (the folder's exact content)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.md5(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def used(tmp_path_factory):
    """A folder holding a finished 3-round run with the int8 export."""
    folder = tmp_path_factory.mktemp("used") / "run"
    proc = run_cli(*TINY, "--rounds=3", "--export_tflite", f"--out_dir={folder}")
    assert proc.returncode == 0, proc.stderr
    return folder


def _one_line(proc, message):
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra, message", [
    ([], "already holds a run: continue it with --resume, replace it with --overwrite"),
    (["--dry_run"], "already holds a run"),
    # Even replacing it: a bad key is refused before the old run is touched.
    (["--overwrite", "--export_tflite", "--sign_key=/no/key.pem"], "cannot read private key"),
    (["--overwrite", "--dataset=npz:/no/such.npz"], "npz file not found"),
])
def test_a_used_folder_is_refused_and_left_byte_identical(used, extra, message):
    before = _digests(used)
    proc = run_cli(*TINY, "--rounds=2", f"--out_dir={used}", *extra)
    _one_line(proc, message)
    assert _digests(used) == before


def test_overwrite_leaves_one_run_only(used, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(used), str(copy)], check=True)
    (copy / "fleet").mkdir()
    (copy / "fleet" / "catchup_000_to_002.patch").write_bytes(b"stale")
    proc = run_cli(*TINY, "--rounds=2", "--seed=4", f"--out_dir={copy}", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(copy))
    assert names == ["accuracy.png", "init", "metrics.csv", "metrics.json", "round_000",
                     "round_001", "tensorboard"]
    events = [n for _, _, files in os.walk(copy / "tensorboard") for n in files]
    assert all("events" in n for n in events) and not any(
        os.path.exists(copy / "round_000" / n) for n in ("model.tflite", "update.patch"))


def test_a_folder_with_other_files_is_never_taken(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        proc = run_cli(*TINY, "--rounds=1", f"--out_dir={folder}", *extra)
        _one_line(proc, "is not empty and holds no run")
    assert os.listdir(folder) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(*TINY, "--rounds=1", f"--out_dir={empty}", "--dry_run")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture()
def read_only(tmp_path):
    """A read-only folder (a read-only mount when running as root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        yield folder
        os.chmod(folder, 0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        missing_tool("a read-only folder (mount rights as root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("inside", ["", "/run"])
def test_an_unwritable_folder_is_one_line_naming_out_dir(read_only, inside, tmp_path):
    out = f"{read_only}{inside}"
    for extra in (["--dry_run"], []):
        proc = run_cli(*TINY, "--rounds=1", f"--out_dir={out}", *extra)
        _one_line(proc, f"cannot write to --out_dir={out}: Read-only file system"
                  if os.geteuid() == 0 else f"cannot write to --out_dir={out}")
    (tmp_path / "file").write_text("")
    proc = run_cli(*TINY, f"--out_dir={tmp_path}/file/run", "--dry_run")
    _one_line(proc, f"cannot write to --out_dir={tmp_path}/file/run: Not a directory")
    proc = run_cli(*TINY, f"--out_dir={tmp_path}/file", "--dry_run")
    _one_line(proc, "is a file, not a folder")


def _npz(path, y_train, y_test):
    rng = np.random.RandomState(0)
    np.savez(path, x_train=rng.rand(len(y_train), 4, 4).astype(np.float32), y_train=y_train,
             x_test=rng.rand(len(y_test), 4, 4).astype(np.float32), y_test=y_test)
    return f"--dataset=npz:{path}"


@pytest.mark.parametrize("y_test, extra, message", [
    (np.r_[np.arange(100) % 10, 1000], [], "test labels 1000 never occur in the training pool"),
    (np.arange(101) % 10 + 10, [], "test labels 10, 11, 12, 13, 14, ... never occur"),
    (np.arange(101) % 10 + 10, ["--num_classes=15"], "test label 19 is outside [0, 15)"),
])
def test_labels_outside_the_training_classes_are_refused(tmp_path, y_test, extra, message):
    dataset = _npz(tmp_path / "d.npz", np.arange(300) % 10, y_test)
    proc = run_cli(dataset, "--initial_samples=100", "--samples_per_round=100", "--rounds=2",
                   "--validation_samples=20", f"--out_dir={tmp_path}/run", "--dry_run", *extra)
    _one_line(proc, message)
    assert not os.path.exists(tmp_path / "run")


def test_a_training_pool_that_skips_classes_is_refused(tmp_path):
    # One stray label of 1000 among zeros would build a 1001-class model.
    dataset = _npz(tmp_path / "d.npz", np.r_[np.arange(299) % 2, 1000], np.arange(101) % 2)
    args = [dataset, "--initial_samples=100", "--samples_per_round=100", "--rounds=2",
            "--validation_samples=20", f"--out_dir={tmp_path}/run", "--dry_run"]
    _one_line(run_cli(*args), "training labels run to 1000 but classes 2, 3, 4, 5, 6, ... "
              "never occur (998 of 1001); give --num_classes=1001")
    assert run_cli(*args, "--num_classes=1001").returncode == 0


def test_explicit_num_classes_trains_unseen_test_classes(tmp_path):
    dataset = _npz(tmp_path / "d.npz", np.arange(300) % 10, np.arange(101) % 10 + 10)
    proc = run_cli(dataset, "--initial_samples=100", "--samples_per_round=100", "--rounds=2",
                   "--validation_samples=20", f"--out_dir={tmp_path}/run", "--dry_run",
                   "--num_classes=20")
    assert proc.returncode == 0, proc.stderr


def test_the_python_api_keeps_the_same_rules(used, small_mnist):
    from tf_dpu.rounds import run
    with pytest.raises(ConfigError, match="already holds a run"):
        run(RunConfig(rounds=1, out_dir=str(used)), progress=None, data=small_mnist)
    bad = small_mnist.__class__(**{**small_mnist.__dict__,
                                   "y_test": np.full_like(small_mnist.y_test, 10)})
    with pytest.raises(DataError, match="outside"):
        run(RunConfig(rounds=1), progress=None, data=bad)
    with pytest.raises(ConfigError, match="--resume continues"):
        RunConfig(resume=True, overwrite=True, out_dir="x").resolved()


def test_a_run_prints_only_its_own_lines(tmp_path):
    proc = run_cli(*TINY[:-1], "--rounds=2", "--export_tflite", f"--out_dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    noise = ("fully_quantize", "XNNPACK", "retracing", "WARNING", "oneDNN")
    assert not [l for l in (proc.stdout + proc.stderr).splitlines()
                if any(word in l for word in noise)], proc.stderr
    verbose = run_cli(*TINY[:-1], "--rounds=2", "--export_tflite", f"--out_dir={tmp_path}/v",
                      "--verbose")
    assert "fully_quantize" in verbose.stdout + verbose.stderr
