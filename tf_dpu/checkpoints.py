"""Epoch checkpoints inside a round, so an interrupted run resumes where it stopped.

A round runs one or more training steps (`methods.run_step`). After every
epoch of step k the trainer's whole state, the shuffling RNG and the step's
best candidate go to `checkpoint/step_k.npz`. A finished step's file stays:
later steps of the round need its outputs (DPU's selection uses step 1's
final weights and contributions). On resume the unfinished round runs its
method again; finished steps are restored instead of trained, and the
interrupted one continues after its last epoch. The files are written by
rename without fsync (they protect against a crashed process, not against
power loss) and carry a SHA-256: a damaged one is ignored and that step
simply starts over. They are removed when the round is saved.
"""

import hashlib
import io
import os
import shutil
import time
from typing import Optional

import numpy as np


class EpochCheckpoints:
    """Saves and finds the epoch checkpoints of the round in progress.

    Args:
      folder: where the files go (`OUT_DIR/checkpoint`).
      round_index: the round they belong to.
      every_seconds: save at most this often (0: after every epoch). Resuming is
        exact whatever the interval: a step without a checkpoint is trained
        again, deterministically; the interval only bounds the lost work.
    """

    def __init__(self, folder: str, round_index: int, every_seconds: float = 30.0):
        self.folder = folder
        self.round = round_index
        self.every_seconds = every_seconds
        self.step = -1   # index of the current run_step within the round
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_seconds

    def next_step(self) -> int:
        self.step += 1
        return self.step

    def _path(self, step: int) -> str:
        return os.path.join(self.folder, f"step_{step}.npz")

    def save(self, step: int, epoch: int, finished: bool, trainer_state, shuffle_state,
             best) -> None:
        os.makedirs(self.folder, exist_ok=True)
        arrays = {f"state_{i}": a for i, a in enumerate(trainer_state)}
        name, keys, position, has_gauss, cached = shuffle_state
        arrays.update(rng_keys=keys, rng_meta=np.array([position, has_gauss], np.int64),
                      rng_cached=np.array(cached), rng_name=np.array(name),
                      meta=np.array([self.round, step, epoch, int(finished)], np.int64))
        if best is not None:
            arrays.update({f"best_{i}": w for i, w in enumerate(best.weights)})
            arrays.update(best_meta=np.array([best.val_accuracy, best.epoch], np.float64),
                          best_step=np.array(best.step))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        tmp = self._path(step) + ".partial"
        with open(tmp, "wb") as f:
            f.write(data + hashlib.sha256(data).digest())
        os.replace(tmp, self._path(step))
        self._last = time.monotonic()

    def load(self, step: int) -> Optional[dict]:
        """The checkpoint of `step` in this round, or None (missing, damaged, stale)."""
        try:
            with open(self._path(step), "rb") as f:
                blob = f.read()
        except OSError:
            return None
        data, digest = blob[:-32], blob[-32:]
        if hashlib.sha256(data).digest() != digest:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            round_index, saved_step, epoch, finished = (int(v) for v in saved["meta"])
            if round_index != self.round or saved_step != step:
                return None
            count = sum(1 for k in saved.files if k.startswith("state_"))
            best_count = sum(1 for k in saved.files if k.startswith("best_") and
                             k[5:].isdigit())
            return {
                "epoch": epoch, "finished": bool(finished),
                "state": [saved[f"state_{i}"] for i in range(count)],
                "shuffle": (str(saved["rng_name"]), saved["rng_keys"],
                            int(saved["rng_meta"][0]), int(saved["rng_meta"][1]),
                            float(saved["rng_cached"])),
                "best": None if not best_count else (
                    [saved[f"best_{i}"] for i in range(best_count)],
                    float(saved["best_meta"][0]), str(saved["best_step"]),
                    int(saved["best_meta"][1])),
            }

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
