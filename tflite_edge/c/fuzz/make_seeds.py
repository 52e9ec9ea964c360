"""Writes a seed corpus for the C fuzz target: valid patches for its synthetic base.

    python tflite_edge/c/fuzz/make_seeds.py CORPUS_DIR

Each patch is written twice: as a whole patch (mode byte 0) and as a sealed
record body (mode byte 1 + record count), the two input forms of dpu_fuzz.c.
Together they use every record kind, position code and value code.
"""

import os
import struct
import sys

import numpy as np

from tflite_edge import patch_format
from tflite_edge.model_file import INT8, INT32, UINT8
from tflite_edge.patch_format import KIND_ELEMENTS, KIND_RAW, Record

BASE_SIZE = 4096


def fuzz_base() -> bytes:
    """The bytes dpu_fuzz.c uses as its base model."""
    i = np.arange(BASE_SIZE)
    return ((i * 131 + (i >> 8)) & 0xff).astype(np.uint8).tobytes()


def _elements(base, target, offset, count, dtype, etype, positions, values, buffer):
    old = np.frombuffer(base, dtype, count, offset)
    view = np.frombuffer(target, dtype, count, offset)
    view[positions] = values
    return Record(KIND_ELEMENTS, offset, buffer, etype, count, positions, view[positions].copy(),
                  old_values=old[positions].copy())


def seed_patches():
    rng = np.random.RandomState(0)
    base = fuzz_base()
    patches = []
    for variant in range(6):
        target = bytearray(base)
        records = []
        i8 = np.dtype("i1")
        # sparse int8 changes (Rice positions), small or random values (delta or raw)
        pos = np.sort(rng.choice(1000, 10 + 20 * variant, replace=False))
        old = np.frombuffer(base, i8, 1000, 64)[pos].astype(int)
        new = (old + rng.randint(-3, 4, len(pos))) if variant % 2 else rng.randint(-128, 128, len(pos))
        records.append(_elements(base, target, 64, 1000, i8, INT8, pos,
                                 np.clip(new, -128, 127).astype(np.int8), 3))
        # int32 elements, dense (bitmap) or all of them
        i32 = np.dtype("<i4")
        count = 50
        pos = np.arange(count) if variant == 5 else np.sort(rng.choice(count, 30, replace=False))
        old = np.frombuffer(base, i32, count, 1200)[pos].astype(np.int64)
        records.append(_elements(base, target, 1200, count, i32, INT32, pos,
                                 (old + rng.randint(-500, 500, len(pos))).astype(np.int32), 4))
        # uint8 elements straddling chunk boundaries, and a raw record
        pos = np.array([0, 63, 64, 127, 128])
        records.append(_elements(base, target, 2047, 200, np.dtype("u1"), UINT8, pos,
                                 rng.randint(0, 256, len(pos)).astype(np.uint8), 5))
        raw = rng.randint(0, 256, 7 + variant).astype(np.uint8).tobytes()
        target[3000:3000 + len(raw)] = raw
        records.append(Record(KIND_RAW, 3000, raw=raw))
        patches.append(patch_format.encode(variant + 1, base, bytes(target), records))
    return patches


def write(folder: str) -> list:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for n, patch in enumerate(seed_patches()):
        count = struct.unpack_from("<I", patch, 92)[0]
        body = patch[100:100 + struct.unpack_from("<I", patch, 96)[0]]
        for name, data in ((f"patch_{n}", b"\0" + patch),
                           (f"body_{n}", b"\1" + struct.pack("<H", count) + body)):
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
    return paths


if __name__ == "__main__":
    print("\n".join(write(sys.argv[1] if len(sys.argv) > 1 else "corpus")))
