"""Applies a patch: verify everything, patch a copy, verify the result, replace atomically.

    from tflite_edge.apply import apply_patch_file
    apply_patch_file("model.tflite", "update.patch", "model.tflite")

The base file is never modified in place: the result is written to a
temporary file in the same folder, flushed to disk, renamed over the output
and the folder entry flushed, so a crash at any moment leaves either the old
or the new model.
"""

import hashlib
import os
import tempfile
from typing import Optional

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.patch_format import KIND_RAW, Patch


def verify(base: bytes, patch: Patch, public_key=None) -> None:
    """Checks signature (if a key is given) and that `base` is the patch's base.

    Raises:
      PatchError: unsigned or badly signed (with a key), wrong base, already applied.
    """
    if public_key is not None:
        from tflite_edge import signing  # pylint: disable=import-outside-toplevel
        if not patch.header.signed:
            raise PatchError("patch is not signed, but a public key was given")
        signing.verify(public_key, patch.signed_part, patch.signature)
    digest = hashlib.sha256(base).digest()
    if digest != patch.header.base_sha256:
        if digest == patch.header.result_sha256:
            raise PatchError("patch is already applied: the model is its result")
        raise PatchError(f"patch is for another model (base sha256 "
                         f"{patch.header.base_sha256.hex()[:16]}..., this model "
                         f"{digest.hex()[:16]}...)")
    if len(base) != patch.header.base_size:  # unreachable unless SHA-256 collides
        raise PatchError("model size does not match the patch's base")


def apply_patch(base: bytes, patch_bytes: bytes, public_key=None) -> bytes:
    """Returns the patched model; raises PatchError without returning anything partial.

    Args:
      base: the model file the device holds.
      patch_bytes: the patch file.
      public_key: an Ed25519 public key; when given, unsigned or badly signed
        patches are refused.
    """
    patch = patch_format.decode(patch_bytes)
    verify(base, patch, public_key)
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
                     public_key=None) -> bytes:
    """Applies a patch file to a model file; `out_path` may equal `base_path`.

    Returns:
      The new model's bytes (also written to `out_path`, default `base_path`).
    """
    result = apply_patch(read_file(base_path, "model"), read_file(patch_path, "patch"),
                         public_key)
    try:
        write_atomic(out_path or base_path, result)
    except OSError as e:
        raise PatchError(f"cannot write {out_path or base_path}: {e.strerror}") from None
    return result
