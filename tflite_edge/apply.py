"""Applies a patch: verify everything, patch a copy, verify the result, replace atomically.

    from tflite_edge.apply import apply_patch_file
    apply_patch_file("model.tflite", "update.patch", "model.tflite")

The base file is never modified in place: the result is written to a
temporary file in the same folder, flushed to disk, renamed over the output
and the folder entry flushed, so a crash at any moment leaves either the old
or the new model. Files are streamed a chunk at a time (`tflite_edge.source`):
memory stays at a chunk plus the decoded patch, whatever the model's size.
"""

import hashlib
import io
import json
import os
import tempfile
from typing import Callable, Iterator, List, Optional, Union

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.patch_format import KIND_RAW, Patch, Record
from tflite_edge.source import Source


def verify(base: Union[bytes, Source], patch: Patch, public_key=None,
           state: Optional[dict] = None) -> None:
    """Checks, in the spec's order, the signature, the round and the base.

    Args:
      base: the device's model (bytes, or a `Source` hashed a chunk at a time).
      patch: a decoded (checksum-verified) patch.
      public_key: when given, the patch must be signed with its private key.
      state: when given (`read_state`), the patch must be for a newer round.

    Raises:
      PatchError: unsigned or badly signed, replayed or downgraded, wrong base,
        already applied.
    """
    if public_key is not None:
        from tflite_edge import signing  # pylint: disable=import-outside-toplevel
        if not patch.header.signed:
            raise PatchError("patch is not signed, but a public key was given")
        signing.verify(public_key, patch.signed_part, patch.signature)
    base = Source.of(base)
    digest = base.sha256()
    if digest == patch.header.result_sha256 and digest != patch.header.base_sha256:
        raise PatchError("patch is already applied: the model is its result")
    if state is not None:
        check_round(patch, state)
    if digest != patch.header.base_sha256:
        raise PatchError(f"patch is for another model (base sha256 "
                         f"{patch.header.base_sha256.hex()[:16]}..., this model "
                         f"{digest.hex()[:16]}...)")
    if base.size != patch.header.base_size:  # unreachable unless SHA-256 collides
        raise PatchError("model size does not match the patch's base")


def read_state(path: str) -> dict:
    """The device's state file: {"round": r, "sha256": hex}; round -1 if there is none."""
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
        if not isinstance(state.get("round"), int):
            raise ValueError("no integer round")
        return state
    except FileNotFoundError:
        return {"round": -1, "sha256": None}
    except (OSError, ValueError) as e:
        raise PatchError(f"device state file {path} is unreadable ({e}); refusing to update "
                         "without knowing the current round") from None


def check_round(patch: Patch, state: dict) -> None:
    """No replay, no downgrade: a patch must be for a newer round than the device's."""
    if patch.header.round <= state["round"]:
        raise PatchError(f"patch is for round {patch.header.round} but the device is at round "
                         f"{state['round']} (replayed or downgraded)")


def apply_patch(base: bytes, patch_bytes: bytes, public_key=None,
                state: Optional[dict] = None) -> bytes:
    """Returns the patched model; raises PatchError without returning anything partial.

    Args:
      base: the model file the device holds.
      patch_bytes: the patch file.
      public_key: an Ed25519 public key; when given, unsigned or badly signed
        patches are refused.
      state: the device's state (`read_state`); when given, patches that are
        not for a newer round are refused.
    """
    out = io.BytesIO()
    apply_to(Source.of(base), patch_bytes, public_key, state, out.write)
    return out.getvalue()


def apply_to(base: Source, patch_bytes: bytes, public_key, state: Optional[dict],
             write: Callable[[bytes], object]) -> Patch:
    """Verifies, then writes the patched model chunk by chunk and checks its hash.

    Raises PatchError before the first write when verification fails, and
    after the last one when the result's hash does not match (the caller
    discards what was written).

    Returns:
      The decoded patch (its header holds the new round and hashes).
    """
    patch = patch_format.decode(patch_bytes)
    verify(base, patch, public_key, state)
    digest = hashlib.sha256()
    for chunk in patched_chunks(base, patch.records):
        digest.update(chunk)
        write(chunk)
    if digest.digest() != patch.header.result_sha256:
        raise PatchError("patched model does not match the patch's result hash; nothing written")
    return patch


def patched_chunks(base: Source, records: List[Record]) -> Iterator[bytearray]:
    """The base's bytes in order, a chunk at a time, with the records written in.

    Records are sorted, do not overlap and are aligned to their elements
    (`patch_format.decode` checks all three), so one sweep suffices and no
    element straddles two chunks.
    """
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
        yield chunk


def _write_part(chunk: bytearray, start: int, end: int, record: Record) -> None:
    """Writes the part of `record` that falls in the chunk [start, end)."""
    if record.kind == KIND_RAW:
        lo, hi = max(record.offset, start), min(record.offset + len(record.raw), end)
        chunk[lo - start:hi - start] = record.raw[lo - record.offset:hi - record.offset]
        return
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


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves the old or the new file."""
    write_atomic_stream(path, lambda write: write(data))


def write_atomic_stream(path: str, produce: Callable[[Callable[[bytes], object]], object]):
    """Like `write_atomic`, for content produced piece by piece.

    `produce(write)` calls `write` with each piece; if it raises, the
    temporary file is removed and `path` is untouched. Returns what `produce`
    returned.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            produced = produce(f.write)
            f.flush()
            os.fsync(f.fileno())
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


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PatchError(f"cannot read {what} {path}: {e.strerror}") from None


def apply_patch_file(base_path: str, patch_path: str, out_path: Optional[str] = None,
                     public_key=None, state_path: Optional[str] = None) -> Patch:
    """Applies a patch file to a model file; `out_path` may equal `base_path`.

    The model is streamed: read, patched and written a chunk at a time.

    With `state_path`, the device's round is kept in that file: patches not for
    a newer round are refused, and after the model is replaced the file records
    the patch's round and the new model's SHA-256. It is written after the
    model, so a crash in between leaves an older round there: that can neither
    lock the device out (the next patch is newer still) nor let an old patch
    in (its base hash no longer matches the model).

    Returns:
      The applied patch (its header holds the new round, size and SHA-256).
    """
    target = out_path or base_path
    with Source.open(base_path) as base:
        patch_bytes = read_file(patch_path, "patch")
        state = read_state(state_path) if state_path else None
        try:
            patch = write_atomic_stream(
                target, lambda write: apply_to(base, patch_bytes, public_key, state, write))
        except OSError as e:
            raise PatchError(f"cannot write {target}: {e.strerror}") from None
    digest = patch.header.result_sha256
    if state_path:
        try:
            write_atomic(state_path, json.dumps(
                {"round": patch.header.round, "sha256": digest.hex()}).encode())
        except OSError as e:
            raise PatchError(f"cannot write {state_path}: {e.strerror}") from None
    return patch
