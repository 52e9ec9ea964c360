"""The device's record of its model: which round it holds and that model's SHA-256.

Anti-rollback needs a round that only grows and survives crashes, deletion
and tampering in the ways that matter (as MCUboot's security counter and
TUF's stored metadata version do):

* a missing state file is refused, not read as "round -1": a device is
  initialised once, explicitly, with the round of the model it holds;
* the file is type-checked (`{"round": true}` is not round 1);
* it names its model's hash, so a model swapped outside the updater is
  noticed instead of silently accepted;
* the new round is committed together with the new model: first written as
  *pending* (old and new round and hash), then the model is renamed into
  place, then the pending entry is folded in. Whatever a crash interrupts,
  the model's actual hash says which of the two entries is true.

File format (JSON): `{"round": r, "sha256": hex, "pending": {"round": r2,
"sha256": hex2}}`, the `pending` entry present only between the two writes.
"""

import dataclasses
import json
from typing import Optional

from tflite_edge.errors import PatchError

MAX_ROUND = 2 ** 32 - 1   # the patch header's round field is 32 bits
_MAX_STATE_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """The round a device's model belongs to and that model's SHA-256."""

    round: int
    sha256: bytes

    def to_json(self) -> dict:
        return {"round": self.round, "sha256": self.sha256.hex()}


def _entry(value, path: str, what: str) -> DeviceState:
    if not isinstance(value, dict):
        raise PatchError(f"device state file {path}: {what} is not an object")
    round_, digest = value.get("round"), value.get("sha256")
    # bool is an int in Python; a state of `true` is not round 1.
    if type(round_) is not int or not 0 <= round_ <= MAX_ROUND:  # pylint: disable=unidiomatic-typecheck
        raise PatchError(f"device state file {path}: {what} has no round in [0, {MAX_ROUND}] "
                         f"(got {round_!r})")
    if not isinstance(digest, str) or len(digest) != 64 or \
            any(c not in "0123456789abcdef" for c in digest):
        raise PatchError(f"device state file {path}: {what} has no 64-digit sha256")
    return DeviceState(round_, bytes.fromhex(digest))


class StateFile:
    """One device's state file, read, then committed in two phases around an update.

    Args:
      path: the state file (by convention `MODEL.state`).
    """

    def __init__(self, path: str):
        self.path = path
        self.current: Optional[DeviceState] = None
        self.next: Optional[DeviceState] = None

    def load(self, model, initial_round: Optional[int] = None) -> DeviceState:
        """The state that describes `model` (a `Source`), pending entries resolved.

        Args:
          model: the model the device runs (its hash resolves a pending entry).
          initial_round: for a new device without a state file: the round of
            the model it holds. Refused when a state file exists.

        Raises:
          PatchError: no state file and no initial round; an initial round
            for a device that has a state; an unreadable or ill-typed file.
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            if initial_round is None:
                raise PatchError(f"device state file {self.path} does not exist; initialise a "
                                 "new device once with --initial_round=N (the round of the "
                                 "model it holds)") from None
            if type(initial_round) is not int or not 0 <= initial_round <= MAX_ROUND:  # pylint: disable=unidiomatic-typecheck
                raise PatchError(f"--initial_round must be in [0, {MAX_ROUND}], got "
                                 f"{initial_round!r}") from None
            self.current = DeviceState(initial_round, model.sha256())
            return self.current
        except OSError as e:
            raise PatchError(f"cannot read device state file {self.path}: {e.strerror}") from None
        if initial_round is not None:
            raise PatchError(f"--initial_round initialises a new device, but {self.path} "
                             "already records its round")
        try:
            if len(raw) > _MAX_STATE_BYTES:
                raise ValueError("too large")
            doc = json.loads(raw)
        except ValueError as e:
            raise PatchError(f"device state file {self.path} is unreadable ({e}); refusing "
                             "to update without knowing the current round") from None
        state = _entry(doc, self.path, "the state")
        if isinstance(doc, dict) and "pending" in doc:
            # An update was cut off between its two state writes: the model's
            # hash says whether its rename happened. Recorded as settled (a
            # failure to rewrite changes nothing: the next load decides again).
            pending = _entry(doc["pending"], self.path, "the pending update")
            if model.sha256() == pending.sha256:
                state = pending
            try:
                self._write(state.to_json())
            except OSError:
                pass
        self.current = state
        return state

    def prepare(self, round_: int, sha256: bytes) -> None:
        """Records the update as pending; called with the new model on disk, not yet in place."""
        self.next = DeviceState(round_, sha256)
        self._write(dict(self.current.to_json(), pending=self.next.to_json()))

    def commit(self) -> bool:
        """Folds the pending entry in, once the model is in place.

        Returns False if the file could not be rewritten: the pending state
        then still resolves to the new round by the model's hash, so the
        device stays consistent.
        """
        try:
            self._write(self.next.to_json())
        except OSError:
            return False
        self.current = self.next
        return True

    def _write(self, doc: dict) -> None:
        from tflite_edge.apply import write_atomic  # pylint: disable=import-outside-toplevel
        write_atomic(self.path, (json.dumps(doc) + "\n").encode())

