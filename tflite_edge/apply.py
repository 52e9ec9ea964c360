"""Applies a patch: verify everything, patch a copy, verify the result, replace atomically.

    from tflite_edge.apply import apply_patch_file
    apply_patch_file("model.tflite", "update.patch", "model.tflite")

The base file is never modified in place: the result is written to a
temporary file in the same folder, flushed to disk, renamed over the output
and the folder entry flushed, so a crash at any moment leaves either the old
or the new model.
"""

import hashlib
import json
import os
import tempfile
from typing import Optional

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.patch_format import KIND_RAW, Patch


def verify(base: bytes, patch: Patch, public_key=None, state: Optional[dict] = None) -> None:
    """Checks, in the spec's order, the signature, the round and the base.

    Args:
      base: the device's model.
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
    digest = hashlib.sha256(base).digest()
    if digest == patch.header.result_sha256 and digest != patch.header.base_sha256:
        raise PatchError("patch is already applied: the model is its result")
    if state is not None:
        check_round(patch, state)
    if digest != patch.header.base_sha256:
        raise PatchError(f"patch is for another model (base sha256 "
                         f"{patch.header.base_sha256.hex()[:16]}..., this model "
                         f"{digest.hex()[:16]}...)")
    if len(base) != patch.header.base_size:  # unreachable unless SHA-256 collides
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
    patch = patch_format.decode(patch_bytes)
    verify(base, patch, public_key, state)
    out = bytearray(base)
    view = np.frombuffer(out, np.uint8)
    for record in patch.records:
        if record.kind == KIND_RAW:
            out[record.offset:record.offset + len(record.raw)] = record.raw
            continue
        dtype = ELEMENT_DTYPES[record.element_type]
        size = dtype.itemsize
        target = view[record.offset:record.offset + record.count * size].reshape(-1, size)
        values = record.values
        if record.value_coding == patch_format.VALUES_DELTA:
            old = target[record.positions].copy().view(dtype).ravel()
            values = patch_format.add_deltas(old, values)
        target[record.positions] = np.ascontiguousarray(values).view(np.uint8).reshape(-1, size)
    result = bytes(out)
    if hashlib.sha256(result).digest() != patch.header.result_sha256:
        raise PatchError("patched model does not match the patch's result hash; nothing written")
    return result


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves the old or the new file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PatchError(f"cannot read {what} {path}: {e.strerror}") from None


def apply_patch_file(base_path: str, patch_path: str, out_path: Optional[str] = None,
                     public_key=None, state_path: Optional[str] = None) -> bytes:
    """Applies a patch file to a model file; `out_path` may equal `base_path`.

    With `state_path`, the device's round is kept in that file: patches not for
    a newer round are refused, and after the model is replaced the file records
    the patch's round and the new model's SHA-256. It is written after the
    model, so a crash in between leaves an older round there: that can neither
    lock the device out (the next patch is newer still) nor let an old patch
    in (its base hash no longer matches the model).

    Returns:
      The new model's bytes (also written to `out_path`, default `base_path`).
    """
    base = read_file(base_path, "model")
    patch_bytes = read_file(patch_path, "patch")
    state = read_state(state_path) if state_path else None
    result = apply_patch(base, patch_bytes, public_key, state)
    target = out_path or base_path
    try:
        write_atomic(target, result)
        if state_path:
            round_index = patch_format.decode(patch_bytes).header.round
            write_atomic(state_path, json.dumps(
                {"round": round_index, "sha256": hashlib.sha256(result).hexdigest()}).encode())
    except OSError as e:
        raise PatchError(f"cannot write {target}: {e.strerror}") from None
    return result
