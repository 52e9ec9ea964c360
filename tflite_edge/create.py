"""Creates the patch that turns one `.tflite` file into another of the same structure."""

from typing import List

import numpy as np

from tflite_edge import patch_format
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES, UINT8, ModelFile
from tflite_edge.patch_format import KIND_ELEMENTS, KIND_RAW, Record

# Raw byte ranges closer than this are merged: a record header costs 16 bytes.
_RAW_MERGE_GAP = 16


def create_patch(base: bytes, target: bytes, round_index: int, signer=None) -> bytes:
    """Returns the patch bytes that turn `base` into `target`.

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
    records = diff_records(ModelFile(base), ModelFile(target))
    return patch_format.encode(round_index, base, target, records, signer)


def diff_records(base: ModelFile, target: ModelFile) -> List[Record]:
    if len(base.data) != len(target.data):
        raise PatchError(f"the models differ in size ({len(base.data)} vs {len(target.data)} "
                         "bytes): not an in-place update of the same structure")
    layout = [(b.offset, b.length) for b in base.buffers]
    if layout != [(b.offset, b.length) for b in target.buffers]:
        raise PatchError("the models do not share their buffer layout (convert later rounds "
                         "with frozen quantization, not from scratch)")
    records = []
    covered = np.zeros(len(base.data), bool)
    for buffer in base.buffers:
        if not buffer.length:
            continue
        covered[buffer.offset:buffer.offset + buffer.length] = True
        etype = base.buffer_type(buffer.index)
        dtype = ELEMENT_DTYPES.get(etype) if etype is not None else None
        if dtype is None or buffer.length % dtype.itemsize or buffer.offset % dtype.itemsize:
            etype, dtype = UINT8, ELEMENT_DTYPES[UINT8]
        old = np.frombuffer(base.data, dtype, buffer.length // dtype.itemsize, buffer.offset)
        new = np.frombuffer(target.data, dtype, buffer.length // dtype.itemsize, buffer.offset)
        # Compare bit patterns (floats: -0.0 vs 0.0 and NaNs are changes too).
        changed = np.flatnonzero(old.view(f"u{dtype.itemsize}") != new.view(f"u{dtype.itemsize}"))
        if len(changed):
            records.append(Record(KIND_ELEMENTS, buffer.offset, buffer.index, etype, len(old),
                                  changed, new[changed].copy(), old_values=old[changed].copy()))
    records.extend(_raw_records(base.data, target.data, covered))
    return records


def _raw_records(base: bytes, target: bytes, covered: np.ndarray) -> List[Record]:
    a, b = np.frombuffer(base, np.uint8), np.frombuffer(target, np.uint8)
    differ = np.flatnonzero((a != b) & ~covered)
    records = []
    if not len(differ):
        return records
    breaks = np.flatnonzero(np.diff(differ) > _RAW_MERGE_GAP)
    starts = np.concatenate([[differ[0]], differ[breaks + 1]])
    ends = np.concatenate([differ[breaks], [differ[-1]]]) + 1
    for start, end in zip(starts, ends):
        # A merged range must not run into a buffer that element records cover.
        inside = np.flatnonzero(covered[start:end])
        if len(inside):
            raise PatchError("internal: raw range overlaps a weight buffer")
        records.append(Record(KIND_RAW, int(start), raw=bytes(target[start:end])))
    return records
