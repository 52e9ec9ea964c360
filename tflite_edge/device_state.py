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

It is also the device's trust store, as TUF's stored root metadata is: the
public key the device trusts (recorded at the first keyed update, replaced
only by a key rotation that the old key signed), the ids of retired keys,
and the release time of the last update applied (an older patch is refused,
clock or no clock).

File format (ASCII JSON, one flat object): `{"round": r, "sha256": hex,
"release_time": t, "key": hex, "retired": [id, ...], "pending": {...}}`;
`release_time`, `key` and `retired` are absent on a device that has none,
and the `pending` entry (a whole next state) only between the two writes.
Anything else (another key, nesting, a byte-order mark, non-ASCII text, more
than 4 KiB) is refused in one line, as the JVM applier refuses it.
"""

import dataclasses
import json
import re
from typing import Optional, Tuple

from tflite_edge.errors import PatchError
from tflite_edge.files import write_atomic
from tflite_edge.keys import check_public_key

MAX_ROUND = 2 ** 32 - 1   # the patch header's round field is 32 bits
MAX_RETIRED = 16          # retired key ids kept (for the message; any other key is refused too)
_MAX_STATE_BYTES = 4096
_KEYS = ("round", "sha256", "release_time", "key", "retired")
# Plain JSON of the shape above, nothing nested deeper than the pending entry
# and the retired list: checked before the parser sees it, so no input can
# reach the parser's recursion limit.
_ALLOWED = re.compile(rb'[ -~\t\r\n]*')


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """What a device knows: its round, its model's SHA-256, and whom it trusts.

    Attributes:
      round: the round its model belongs to.
      sha256: that model's SHA-256.
      release_time: the release time of the last update applied (0: none).
      key: the raw public key that must sign its updates (None: none yet).
      retired: ids of keys retired by rotations, newest last.
    """

    round: int
    sha256: bytes
    release_time: int = 0
    key: Optional[bytes] = None
    retired: Tuple[bytes, ...] = ()

    def to_json(self) -> dict:
        doc = {"round": self.round, "sha256": self.sha256.hex()}
        if self.release_time:
            doc["release_time"] = self.release_time
        if self.key is not None:
            doc["key"] = self.key.hex()
        if self.retired:
            doc["retired"] = [k.hex() for k in self.retired]
        return doc


def _hex(value, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and \
        all(c in "0123456789abcdef" for c in value)


def _entry(value, path: str, what: str, pending_allowed: bool = False) -> DeviceState:
    if not isinstance(value, dict):
        raise PatchError(f"device state file {path}: {what} is not an object")
    unknown = sorted(set(value) - set(_KEYS) - ({"pending"} if pending_allowed else set()))
    if unknown:
        raise PatchError(f"device state file {path}: {what} has an unknown field "
                         f"{unknown[0]!r}")
    round_, digest = value.get("round"), value.get("sha256")
    # bool is an int in Python; a state of `true` is not round 1.
    if type(round_) is not int or not 0 <= round_ <= MAX_ROUND:  # pylint: disable=unidiomatic-typecheck
        raise PatchError(f"device state file {path}: {what} has no round in [0, {MAX_ROUND}] "
                         f"(got {round_!r})")
    if not _hex(digest, 64):
        raise PatchError(f"device state file {path}: {what} has no 64-digit sha256")
    release = value.get("release_time", 0)
    if type(release) is not int or not 0 <= release < 2 ** 64:  # pylint: disable=unidiomatic-typecheck
        raise PatchError(f"device state file {path}: {what} has a release_time that is not "
                         f"an integer in [0, 2^64) (got {release!r})")
    key = value.get("key")
    if key is not None and not _hex(key, 64):
        raise PatchError(f"device state file {path}: {what} has a key that is not 64 hex "
                         "digits")
    retired = value.get("retired", [])
    if not isinstance(retired, list) or len(retired) > MAX_RETIRED or \
            not all(_hex(k, 16) for k in retired):
        raise PatchError(f"device state file {path}: {what} has a retired list that is not "
                         f"at most {MAX_RETIRED} ids of 16 hex digits")
    if key is not None:
        try:
            check_public_key(bytes.fromhex(key))
        except PatchError as e:
            raise PatchError(f"device state file {path}: {what} holds a refused key ({e})") \
                from None
    return DeviceState(round_, bytes.fromhex(digest), release,
                       None if key is None else bytes.fromhex(key),
                       tuple(bytes.fromhex(k) for k in retired))


def parse(raw: bytes, path: str) -> dict:
    """The state file's JSON object, or one line saying why it is refused."""
    def unreadable(why):
        return PatchError(f"device state file {path} is unreadable ({why}); refusing to "
                          "update without knowing the current round")
    if len(raw) > _MAX_STATE_BYTES:
        raise unreadable("too large")
    if not _ALLOWED.fullmatch(raw):
        raise unreadable("not plain ASCII JSON (a byte-order mark or other bytes)")
    depth = deepest = 0
    in_string = escaped = False
    for c in raw.decode("ascii"):
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = c == "\\", c != '"'
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    if deepest > 3:
        raise unreadable("nested deeper than a state can be")
    try:
        doc = json.loads(raw.decode("ascii"))
    except ValueError as e:
        raise unreadable(str(e)) from None
    if not isinstance(doc, dict):
        raise PatchError(f"device state file {path}: the state is not an object")
    return doc


class StateFile:
    """One device's state file, read, then committed in two phases around an update.

    Args:
      path: the state file (by convention `MODEL.state`).
    """

    def __init__(self, path: str):
        self.path = path
        self.current: Optional[DeviceState] = None
        self.next: Optional[DeviceState] = None

    def load(self, model, initial_round: Optional[int] = None,
             key: Optional[bytes] = None) -> DeviceState:
        """The state that describes `model` (a `Source`), pending entries resolved.

        Args:
          model: the model the device runs (its hash resolves a pending entry).
          initial_round: for a new device without a state file: the round of
            the model it holds. Refused when a state file exists.
          key: for a new device, the public key it trusts from now on.

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
            self.current = DeviceState(initial_round, model.sha256(), key=key)
            return self.current
        except OSError as e:
            raise PatchError(f"cannot read device state file {self.path}: {e.strerror}") from None
        if initial_round is not None:
            raise PatchError(f"--initial_round initialises a new device, but {self.path} "
                             "already records its round")
        doc = parse(raw, self.path)
        state = _entry(doc, self.path, "the state", pending_allowed=True)
        if "pending" in doc:
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

    def prepare(self, next_state: DeviceState) -> None:
        """Records the update as pending; called with the new model on disk, not yet in place."""
        self.next = next_state
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
        write_atomic(self.path, (json.dumps(doc) + "\n").encode())

