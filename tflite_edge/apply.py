"""Applies a patch: verify everything, patch a copy, verify the result, replace atomically.

    from tflite_edge.apply import apply_patch_file
    apply_patch_file("model.tflite", "update.patch", "model.tflite", state_path="model.tflite.state")

Checks run in the order of `PATCH_FORMAT.md`: the patch's size and checksum,
its signature, the device's round, the base's size and SHA-256, and only then
are the records decoded, each bounded by the patch's own length and by the
base's real weight buffers (`tflite_edge.regions`). The base file is never
modified in place: the result goes to a temporary file in the same folder,
is flushed to disk, renamed over the output and the folder entry flushed, so
a crash at any moment leaves either the old or the new model. Files are
streamed a chunk at a time (`tflite_edge.source`).
"""

import contextlib
import hashlib
import io
import os
import stat
import tempfile
import time
from typing import Callable, Iterator, List, Optional, Union

import numpy as np

from tflite_edge import patch_format
from tflite_edge import source as sources
from tflite_edge.device_state import DeviceState, StateFile
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.patch_format import KIND_WHOLE_FILE, Envelope, Patch, Record
from tflite_edge.regions import writable_regions
from tflite_edge.source import Source

# Whether a device takes whole-file updates: only from patches whose signature
# it verified (the default), always, or never.
WHOLE_FILE_POLICIES = ("signed", "always", "never")
LOCK_TIMEOUT_SECONDS = 60.0


def _whole_file_allowed(policy: str, public_key) -> bool:
    if policy not in WHOLE_FILE_POLICIES:
        raise PatchError(f"whole-file policy {policy!r} is not one of "
                         f"{', '.join(WHOLE_FILE_POLICIES)}")
    return policy == "always" or (policy == "signed" and public_key is not None)


def verify(base: Union[bytes, Source], envelope: Envelope, public_key=None,
           state: Optional[DeviceState] = None, whole_file: str = "signed") -> Patch:
    """Checks a patch against the device, in the spec's order; returns its records.

    Args:
      base: the device's model (bytes, or a `Source` hashed a chunk at a time).
      envelope: from `patch_format.open_envelope` (size and checksum verified).
      public_key: when given, the patch must be signed with its private key.
      state: when given, the device's round and model hash: the patch must be
        for a newer round, and the state must describe this model.
      whole_file: `signed`, `always` or `never` (see WHOLE_FILE_POLICIES).

    Raises:
      PatchError: unsigned or badly signed, replayed or downgraded, wrong
        base, already applied, a malformed record or one outside the base's
        weight buffers, a refused whole-file update.
    """
    header = envelope.header
    if public_key is not None:
        from tflite_edge import signing  # pylint: disable=import-outside-toplevel
        if not header.signed:
            raise PatchError("patch is not signed, but a public key was given")
        signing.verify(public_key, envelope.signed_part, envelope.signature)
    base = Source.of(base)
    digest = base.sha256()
    if digest == header.result_sha256 and digest != header.base_sha256:
        raise PatchError("patch is already applied: the model is its result")
    if state is not None:
        check_round(header.round, state.round)
        if state.sha256 != digest:
            raise PatchError(f"the device state describes another model (sha256 "
                             f"{state.sha256.hex()[:16]}..., this model {digest.hex()[:16]}...): "
                             "the model was replaced outside the updater")
    if base.size != header.base_size or digest != header.base_sha256:
        raise PatchError(f"patch is for another model (base sha256 "
                         f"{header.base_sha256.hex()[:16]}..., this model "
                         f"{digest.hex()[:16]}...)")
    return patch_format.decode_records(
        envelope, lambda: writable_regions(base.buffer, base.size),
        _whole_file_allowed(whole_file, public_key))


def check_round(patch_round: int, device_round: int) -> None:
    """No replay, no downgrade: a patch must be for a newer round than the device's."""
    if patch_round <= device_round:
        raise PatchError(f"patch is for round {patch_round} but the device is at round "
                         f"{device_round} (replayed or downgraded)")


def apply_patch(base: bytes, patch_bytes: bytes, public_key=None,
                state: Optional[DeviceState] = None, whole_file: str = "signed") -> bytes:
    """Returns the patched model; raises PatchError without returning anything partial.

    Args:
      base: the model file the device holds.
      patch_bytes: the patch file.
      public_key: an Ed25519 public key; when given, unsigned or badly signed
        patches are refused.
      state: the device's round and model hash; when given, patches that are
        not for a newer round are refused.
      whole_file: which whole-file updates to accept (WHOLE_FILE_POLICIES).
    """
    out = io.BytesIO()
    apply_to(Source.of(base), patch_bytes, public_key, state, out.write, whole_file)
    return out.getvalue()


def apply_to(base: Source, patch_bytes: bytes, public_key, state: Optional[DeviceState],
             write: Callable[[bytes], object], whole_file: str = "signed") -> Patch:
    """Verifies, then writes the patched model chunk by chunk and checks its hash.

    Raises PatchError before the first write when verification fails, and
    after the last one when the result's hash does not match (the caller
    discards what was written).

    Returns:
      The decoded patch (its header holds the new round and hashes).
    """
    patch = verify(base, patch_format.open_envelope(patch_bytes), public_key, state, whole_file)
    digest = hashlib.sha256()
    for chunk in patched_chunks(base, patch.records):
        digest.update(chunk)
        write(chunk)
    if digest.digest() != patch.header.result_sha256:
        raise PatchError("patched model does not match the patch's result hash; nothing written")
    return patch


def patched_chunks(base: Source, records: List[Record]) -> Iterator[bytes]:
    """The result's bytes in order, a chunk at a time.

    Element records are sorted, do not overlap and are aligned to their
    elements (`patch_format.decode_records` checks all three), so one sweep
    over the base suffices and no element straddles two chunks. A whole-file
    record is the result by itself.
    """
    if records and records[0].kind == KIND_WHOLE_FILE:
        raw = records[0].raw
        for start in range(0, len(raw), sources.CHUNK):
            yield raw[start:start + sources.CHUNK]
        return
    index = 0   # the first record not yet written in full
    for start, data in base.chunks():
        chunk = bytearray(data)
        end = start + len(chunk)
        while index < len(records) and records[index].offset < end:
            record = records[index]
            _write_part(chunk, start, end, record)
            if record.offset + record.span > end:
                break  # continues in the next chunk
            index += 1
        yield bytes(chunk)


def _write_part(chunk: bytearray, start: int, end: int, record: Record) -> None:
    """Writes the part of an element record that falls in the chunk [start, end)."""
    dtype = ELEMENT_DTYPES[record.element_type]
    size = dtype.itemsize
    first = max(0, (start - record.offset) // size)
    last = min(record.count, (end - record.offset) // size)
    lo, hi = np.searchsorted(record.positions, [first, last])
    if lo == hi:
        return
    view = np.frombuffer(chunk, np.uint8)
    at = record.offset + first * size - start
    target = view[at:at + (last - first) * size].reshape(-1, size)
    where = record.positions[lo:hi] - first
    values = record.values[lo:hi]
    if record.value_coding == patch_format.VALUES_DELTA:
        old = target[where].copy().view(dtype).ravel()
        values = patch_format.add_deltas(old, values)
    target[where] = np.ascontiguousarray(values).view(np.uint8).reshape(-1, size)


def _new_file_mode(path: str) -> int:
    """The mode a replaced file keeps, or what the umask gives a new one."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves the old or the new file."""
    write_atomic_stream(path, lambda write: write(data))


def write_atomic_stream(path: str, produce: Callable[[Callable[[bytes], object]], object],
                        before_replace: Optional[Callable[[], None]] = None):
    """Like `write_atomic`, for content produced piece by piece.

    `produce(write)` calls `write` with each piece; if it (or `before_replace`,
    called once the content is on disk, just before the rename) raises, the
    temporary file is removed and `path` is untouched. A symbolic link is
    followed: the file it points to is replaced and the link stays. The
    file keeps its mode (a new one gets the umask's). Returns what `produce`
    returned.
    """
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            produced = produce(f.write)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return produced


def read_patch_file(path: str) -> bytes:
    """A patch file's bytes, refusing one larger than the format can describe."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise PatchError(f"cannot read patch {path}: {e.strerror}") from None
    if size > patch_format.MAX_PATCH_SIZE:
        raise PatchError(f"patch {path} is {size} bytes, more than a patch can be")
    return read_file(path, "patch")


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PatchError(f"cannot read {what} {path}: {e.strerror}") from None


@contextlib.contextmanager
def exclusive(path: str, timeout: float = LOCK_TIMEOUT_SECONDS):
    """Holds an advisory lock on `path` (created if missing) for the block.

    Two applies to one model would otherwise both verify the same base and
    both report success, leaving the state and the model disagreeing.
    """
    import fcntl  # pylint: disable=import-outside-toplevel
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PatchError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PatchError(f"another update of this model is still running "
                                     f"(lock {path} held for {timeout:.0f} s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)   # releases the lock


def apply_patch_file(base_path: str, patch_path: str, out_path: Optional[str] = None,
                     public_key=None, state_path: Optional[str] = None,
                     initial_round: Optional[int] = None, whole_file: str = "signed") -> Patch:
    """Applies a patch file to a model file; `out_path` may equal `base_path`.

    The model is streamed: read, patched and written a chunk at a time.
    Applies to one output are serialised by a lock file beside the state
    file (or the output).

    With `state_path`, the device's round and model hash are kept in that file
    (`tflite_edge.device_state`): it must exist (or `initial_round` creates it
    for a new device), describe the base, and the patch must be for a newer
    round. The new state is committed together with the model: it is written,
    marked pending, before the model is renamed into place, and resolved by
    the model's hash after a crash, so the two never disagree and a state
    that cannot be written leaves the model untouched.

    Returns:
      The applied patch (its header holds the new round, size and SHA-256).
    """
    target = out_path or base_path
    lock = f"{state_path or os.path.realpath(target)}.lock"
    Source.open(base_path).close()   # a missing model is named before anything else
    patch_bytes = read_patch_file(patch_path)
    states = StateFile(state_path) if state_path else None
    applied: List[Patch] = []

    def produce(write):
        state = states.load(base, initial_round) if states else None
        applied.append(apply_to(base, patch_bytes, public_key, state, write, whole_file))

    def before_replace():
        if states:
            header = applied[0].header
            states.prepare(header.round, header.result_sha256)

    with exclusive(lock), Source.open(base_path) as base:
        try:
            write_atomic_stream(target, produce, before_replace)
        except OSError as e:
            raise PatchError(f"cannot write {e.filename or target}: {e.strerror}; the model "
                             "is unchanged") from None
        if states:
            states.commit()
    return applied[0]
