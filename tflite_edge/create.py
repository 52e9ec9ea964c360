"""Creates the patch that turns one `.tflite` file into another of the same structure.

    from tflite_edge.create import create_patch_files
    patch = create_patch_files("round_003/model.tflite", "round_009/model.tflite", 9)

Any two files of one deployment share their structure (the quantization is
frozen after round 0), so a patch can go from any earlier round straight to
the latest: a device that missed rounds catches up with one patch.
"""

from typing import List, Optional, Tuple

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES, ModelFile
from tflite_edge.patch_format import KIND_ELEMENTS, KIND_WHOLE_FILE, Record
from tflite_edge import source as sources
from tflite_edge.regions import writable_regions
from tflite_edge.source import Source


def create_patch(base: bytes, target: bytes, round_index: int, signer=None,
                 release_time: Optional[int] = None, expires: int = 0,
                 version: int = patch_format.VERSION) -> bytes:
    """Returns the patch bytes that turn `base` into `target` (both in memory).

    Weight and bias buffers are diffed element by element in their tensor's
    type (int8 weights, int32 biases, ...). Nothing else may differ: a patch
    writes only where weights live (see `create_whole_file_patch` for the rest).

    Args:
      base, target: two model files sharing their structure (same size, same
        buffer layout), as frozen-quantization updates produce.
      round_index: the round `target` belongs to.
      signer: optional `signing.Signer` (unsigned patches are refused by
        devices unless they opt in).
      release_time: seconds since 1970 (default: now, or SOURCE_DATE_EPOCH).
      expires: seconds since 1970 after which devices refuse it; 0: never.
      version: the patch format, 4 (adaptive codes, compact records) or 3
        for devices whose appliers read nothing newer.

    Raises:
      PatchError: the files do not share structure, or differ outside their
        weight and bias buffers.
    """
    return _create(Source.of(base), Source.of(target), round_index, signer, release_time,
                   expires, version)


def create_patch_files(base_path: str, target_path: str, round_index: int,
                       signer=None, release_time: Optional[int] = None,
                       expires: int = 0, version: int = patch_format.VERSION) -> bytes:
    """Like `create_patch`, reading both files a chunk at a time (small memory)."""
    with Source.open(base_path) as base, Source.open(target_path) as target:
        return _create(base, target, round_index, signer, release_time, expires, version)


def _create(base: Source, target: Source, round_index: int, signer, release_time,
            expires, version) -> bytes:
    records = diff_records(base, target)
    return patch_format.encode_hashed(round_index, base.size, base.sha256(), target.size,
                                      target.sha256(), records, signer, release_time, expires,
                                      version)


def create_rotation_patch(base: Source, round_index: int, signer, next_key: bytes,
                          release_time: Optional[int] = None, expires: int = 0,
                          version: int = patch_format.VERSION) -> bytes:
    """A patch that changes no weight and hands the device over to `next_key`.

    Signed by the current key (`signer`); a device that applies it trusts
    `next_key` from then on and refuses the current key. Its result is its
    base, so it may keep the device's round (`round_index` = the round of
    `base`).
    """
    if signer is None:
        raise PatchError("a key rotation must be signed by the current key")
    if bytes(next_key) == signer.public_key:
        raise PatchError("the next key is the current key")
    record = Record(patch_format.KIND_ROTATION, 0, raw=bytes(next_key))
    return patch_format.encode_hashed(round_index, base.size, base.sha256(), base.size,
                                      base.sha256(), [record], signer, release_time, expires,
                                      version)


def create_whole_file_patch(base: Source, target: Source, round_index: int,
                            signer=None, release_time: Optional[int] = None,
                            expires: int = 0, version: int = patch_format.VERSION) -> bytes:
    """A patch that replaces `base` with `target` wholesale (any size, any structure).

    It is verified like any other patch (signature, round, base hash, result
    hash), but a device may refuse whole-file updates by configuration.
    """
    record = Record(KIND_WHOLE_FILE, 0, raw=target.read(0, target.size))
    return patch_format.encode_hashed(round_index, base.size, base.sha256(), target.size,
                                      target.sha256(), [record], signer, release_time, expires,
                                      version)


def diff_records(base_source: Source, target_source: Source) -> List[Record]:
    """The records that turn one model into the other, comparing a chunk at a time.

    Only the data of weight and bias buffers may differ (`tflite_edge.regions`);
    the appliers derive the same buffers from the base and write nowhere else.

    Raises:
      PatchError: the files differ in size or anywhere outside those buffers.
    """
    if base_source.size != target_source.size:
        raise PatchError(f"the models differ in size ({base_source.size} vs "
                         f"{target_source.size} bytes): not an in-place update of the same "
                         "structure (send a whole-file update)")
    writable = writable_regions(base_source.buffer, base_source.size)
    if writable != writable_regions(target_source.buffer, target_source.size):
        raise PatchError("the models do not share their weight buffers (convert later rounds "
                         "with frozen quantization, not from scratch)")
    records, at = [], 0
    model = None
    for region in sorted(writable.values(), key=lambda r: r.offset):
        _refuse_changes(base_source, target_source, at, region.offset)
        record = _diff_buffer(base_source, target_source, region.offset, region.count,
                              ELEMENT_DTYPES[region.type])
        if record is not None:
            record.buffer, record.element_type = region.buffer, region.type
            model = model or ModelFile(base_source.buffer)
            record.rows = row_lengths(model, region.buffer)
            records.append(record)
        at = region.offset + region.length
    _refuse_changes(base_source, target_source, at, base_source.size)
    return records


def row_lengths(model: ModelFile, buffer: int) -> Tuple[int, ...]:
    """Row lengths under which a buffer's changes may line up in columns.

    A fully connected kernel is [outputs, inputs] and a convolution's
    [outputs, height, width, inputs], stored row by row, so a column is one
    input feature; a depthwise kernel is [1, height, width, channels], whose
    columns are its channels.
    """
    rows = set()
    for tensor in model.tensors_of_buffer(buffer):
        shape = [max(1, int(d)) for d in tensor.shape]
        if len(shape) >= 2:
            rows.add(int(np.prod(shape[1:])))
            rows.add(shape[-1])
    return tuple(sorted(rows))


def _refuse_changes(base: Source, target: Source, start: int, end: int) -> None:
    """Raises unless the two files agree on [start, end) (outside every weight buffer)."""
    for offset, chunk in base.chunks(start, end):
        other = target.read(offset, len(chunk))
        if chunk != other:
            first = offset + int(np.flatnonzero(np.frombuffer(chunk, np.uint8)
                                                != np.frombuffer(other, np.uint8))[0])
            raise PatchError(f"the models differ at byte {first}, outside their weight and "
                             "bias buffers (a changed scale, shape or operator): a patch "
                             "cannot carry that; send a whole-file update")


def _diff_buffer(base: Source, target: Source, offset: int, count: int,
                 dtype: np.dtype) -> Optional[Record]:
    step = sources.CHUNK // dtype.itemsize
    unsigned = f"u{dtype.itemsize}"
    positions, new_values, old_values = [], [], []
    for first in range(0, count, step):
        n = min(step, count - first)
        at = offset + first * dtype.itemsize
        old = np.frombuffer(base.read(at, n * dtype.itemsize), dtype)
        new = np.frombuffer(target.read(at, n * dtype.itemsize), dtype)
        # Compare bit patterns (floats: -0.0 vs 0.0 and NaNs are changes too).
        changed = np.flatnonzero(old.view(unsigned) != new.view(unsigned))
        if len(changed):
            positions.append(changed + first)
            new_values.append(new[changed])
            old_values.append(old[changed])
    if not positions:
        return None
    return Record(KIND_ELEMENTS, offset, count=count, positions=np.concatenate(positions),
                  values=np.concatenate(new_values), old_values=np.concatenate(old_values))
