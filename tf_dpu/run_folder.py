"""The run folder (`--out_dir`): one run per folder, never two mixed.

A second run into a folder that holds one would overwrite its first rounds
and leave its later rounds, `.tflite` files and patches behind, so a fleet
would be served a mix of two runs. So a folder that holds a run is refused
unless the run is continued (`--resume`) or replaced whole (`--overwrite`:
the old run is removed before anything is written); a new or empty folder
is fine, and a non-empty folder that holds no run is never touched. Every
check runs before the first write, and an unwritable folder is reported with
its flag's name, before TensorFlow is even imported.
"""

import os
import shutil
import tempfile
from typing import Iterable

from tf_dpu.errors import ConfigError

# What the first write of a run creates (`init/`), and what later ones add.
RUN_ENTRIES = ("metrics.json", "init", "round_000", "checkpoint", "tensorboard")
# Under tf.distribute's multi-worker strategy each worker keeps its own copy
# here, written by that worker alone.
WORKERS = "workers"


def holds_run(path: str) -> bool:
    """Whether `path` holds (part of) a run of this program."""
    return any(os.path.exists(os.path.join(path, name)) for name in RUN_ENTRIES)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check(path: str, resume: bool, overwrite: bool, ignore: Iterable[str] = ()) -> None:
    """Refuses a folder this run must not write into; writes nothing.

    Args:
      path: the run folder.
      resume: the run continues the one in the folder.
      overwrite: the run replaces the one in the folder.
      ignore: entries that do not make the folder non-empty (another process
        of the same run may have created them).

    Raises:
      ConfigError: one line naming --out_dir.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out_dir={path} is a file, not a folder")
    if os.path.isdir(path):
        try:
            entries = [e for e in os.listdir(path) if e not in ignore]
        except OSError as e:
            raise ConfigError(f"cannot read --out_dir={path}: {e.strerror}") from None
        if holds_run(path):
            if not (resume or overwrite):
                raise ConfigError(
                    f"--out_dir={path} already holds a run: continue it with --resume, "
                    "replace it with --overwrite, or choose another folder")
        elif entries:
            raise ConfigError(f"--out_dir={path} is not empty and holds no run of this "
                              "program; choose a new or empty folder")
    _check_writable(path)


def _check_writable(path: str) -> None:
    """Creates and removes a file where the run's first file would go."""
    folder = _nearest_existing(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to --out_dir={path}: {e.strerror or e}") from None


def claim(path: str, overwrite: bool, keep: Iterable[str] = ()) -> None:
    """Takes the folder for this run, once every check has passed.

    With `overwrite`, the old run is removed first, except the entries in
    `keep` (a multi-worker chief leaves `workers/`, whose folders belong to
    the other processes).
    """
    if overwrite and os.path.isdir(path) and holds_run(path):
        for name in os.listdir(path):
            if name in keep:
                continue
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.unlink(entry)
    os.makedirs(path, exist_ok=True)


def prune_workers(path: str, count: int) -> None:
    """Removes `workers/N` folders of an overwritten run that had more workers."""
    folder = os.path.join(path, WORKERS)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if not name.isdigit() or int(name) >= count:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
