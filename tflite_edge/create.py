"""Creates the patch that turns one `.tflite` file into another of the same structure.

    from tflite_edge.create import create_patch_files
    patch = create_patch_files("round_003/model.tflite", "round_009/model.tflite", 9)

Any two files of one deployment share their structure (the quantization is
frozen after round 0), so a patch can go from any earlier round straight to
the latest: a device that missed rounds catches up with one patch.
"""

from typing import List, Optional

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES, UINT8, ModelFile
from tflite_edge.patch_format import KIND_ELEMENTS, KIND_RAW, Record
from tflite_edge import source as sources
from tflite_edge.source import Source

# Raw byte ranges closer than this are merged: a record header costs 16 bytes.
_RAW_MERGE_GAP = 16


def create_patch(base: bytes, target: bytes, round_index: int, signer=None) -> bytes:
    """Returns the patch bytes that turn `base` into `target` (both in memory).

    Weight buffers are diffed element by element in their tensor's type
    (int8 weights, int32 biases, ...); any other changed bytes (a refreshed
    quantization scale) go into raw records.

    Args:
      base, target: two model files sharing their structure (same size, same
        buffer layout), as frozen-quantization updates produce.
      round_index: the round `target` belongs to.
      signer: optional callable(bytes) -> Ed25519 signature.

    Raises:
      PatchError: the files do not share structure.
    """
    return _create(Source.of(base), Source.of(target), round_index, signer)


def create_patch_files(base_path: str, target_path: str, round_index: int,
                       signer=None) -> bytes:
    """Like `create_patch`, reading both files a chunk at a time (small memory)."""
    with Source.open(base_path) as base, Source.open(target_path) as target:
        return _create(base, target, round_index, signer)


def _create(base: Source, target: Source, round_index: int, signer) -> bytes:
    records = diff_records(base, target)
    return patch_format.encode_hashed(round_index, base.size, base.sha256(), target.size,
                                      target.sha256(), records, signer)


def _parse(source: Source) -> ModelFile:
    if source.size < 8:
        raise PatchError(f"{source.path or 'model'} is not a TFLite model "
                         f"({source.size} bytes)")
    return ModelFile(source.buffer)


def diff_records(base_source: Source, target_source: Source) -> List[Record]:
    """The records that turn one model into the other, comparing a chunk at a time."""
    base, target = _parse(base_source), _parse(target_source)
    if base_source.size != target_source.size:
        raise PatchError(f"the models differ in size ({base_source.size} vs "
                         f"{target_source.size} bytes): not an in-place update of the same "
                         "structure")
    layout = [(b.offset, b.length) for b in base.buffers]
    if layout != [(b.offset, b.length) for b in target.buffers]:
        raise PatchError("the models do not share their buffer layout (convert later rounds "
                         "with frozen quantization, not from scratch)")
    records = []
    for buffer in base.buffers:
        if not buffer.length:
            continue
        etype = base.buffer_type(buffer.index)
        dtype = ELEMENT_DTYPES.get(etype) if etype is not None else None
        if dtype is None or buffer.length % dtype.itemsize or buffer.offset % dtype.itemsize:
            etype, dtype = UINT8, ELEMENT_DTYPES[UINT8]
        record = _diff_buffer(base_source, target_source, buffer.offset,
                              buffer.length // dtype.itemsize, dtype)
        if record is not None:
            record.buffer, record.element_type = buffer.index, etype
            records.append(record)
    covered = sorted((b.offset, b.offset + b.length) for b in base.buffers if b.length)
    records.extend(_raw_records(base_source, target_source, covered))
    return records


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


def _raw_records(base: Source, target: Source, covered) -> List[Record]:
    """Raw records for changed bytes outside the weight buffers (never inside one)."""
    gaps, at = [], 0
    for start, end in covered + [(base.size, base.size)]:
        if start > at:
            gaps.append((at, start))
        at = max(at, end)
    records = []
    for gap_start, gap_end in gaps:
        differ = []
        for offset, chunk in base.chunks(gap_start, gap_end):
            other = target.read(offset, len(chunk))
            differ.append(np.flatnonzero(np.frombuffer(chunk, np.uint8)
                                         != np.frombuffer(other, np.uint8)) + offset)
        differ = np.concatenate(differ) if differ else np.zeros(0, np.int64)
        if not len(differ):
            continue
        breaks = np.flatnonzero(np.diff(differ) > _RAW_MERGE_GAP)
        starts = np.concatenate([[differ[0]], differ[breaks + 1]])
        ends = np.concatenate([differ[breaks], [differ[-1]]]) + 1
        for start, end in zip(starts, ends):
            records.append(Record(KIND_RAW, int(start),
                                  raw=bytes(target.read(int(start), int(end - start)))))
    return records
