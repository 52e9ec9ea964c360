"""Seed patches for the fuzz targets: valid patches for the tiny model they use as base.

    python tflite_edge/c/fuzz/make_seeds.py CORPUS_DIR

The base is `tests/fixtures/tiny_model.tflite` (the bytes of `tiny_model.h`).
Each patch is written twice: as a whole patch (mode byte 0) and as a sealed
record body (mode byte 1 + record count), the two input forms of dpu_fuzz.c.
Together they use every record kind, position code and value code of every
format version (the adaptive codes of versions 4 and 5 forced where the
writer would not choose them on so small a model).
"""

import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "tests",
                          "fixtures", "tiny_model.tflite")


def fuzz_base() -> bytes:
    """The bytes the fuzz targets use as their base model."""
    with open(TINY_MODEL, "rb") as f:
        return f.read()


def _change(base: bytes, target: bytearray, region, positions, rng, small: bool):
    """Writes new values at `positions` of a region into `target`."""
    from tflite_edge.model_file import ELEMENT_DTYPES  # pylint: disable=import-outside-toplevel
    dtype = ELEMENT_DTYPES[region.type]
    old = np.frombuffer(base, dtype, region.count, region.offset)[positions].astype(np.int64)
    info = np.iinfo(dtype)
    if small:
        new = old + rng.choice([-3, -2, -1, 1, 2, 3], len(positions))
    else:
        new = rng.randint(max(info.min, -2 ** 31), min(info.max, 2 ** 31 - 1), len(positions))
    new = np.where(new == old, old + 1, new)
    view = np.frombuffer(target, dtype, region.count, region.offset)
    view[positions] = np.clip(new, info.min, info.max).astype(dtype)


def seed_patches():
    """Valid patches for the tiny model, one per variant, version and forced coding."""
    from tflite_edge import patch_format  # pylint: disable=import-outside-toplevel
    from tflite_edge import positions as codes  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch, diff_records  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_whole_file_patch  # pylint: disable=import-outside-toplevel
    from tflite_edge.model_file import INT8  # pylint: disable=import-outside-toplevel
    from tflite_edge.regions import writable_regions  # pylint: disable=import-outside-toplevel
    from tflite_edge.source import Source  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(0)
    base = fuzz_base()
    regions = sorted(writable_regions(base, len(base)).values(), key=lambda r: r.offset)
    patches = []
    for variant in range(6):
        target = bytearray(base)
        for number, region in enumerate(regions):
            if (number + variant) % 3 == 2:
                continue
            if variant == 5 or region.count <= 4:
                positions = np.arange(region.count)             # every element: "all"
            elif variant % 2:
                positions = np.sort(rng.choice(region.count, max(1, region.count // 2),
                                               replace=False))  # dense: bitmap
            else:
                positions = np.sort(rng.choice(region.count, 2, replace=False))  # sparse: Rice
            _change(base, target, region, positions, rng, small=variant % 3 != 1)
            if variant in (3, 4) and region.type == INT8:
                # int8 changes to the ends of the range: version 5's saturating code
                view = np.frombuffer(target, np.int8, region.count, region.offset)
                ends = positions[::2]
                view[ends] = np.where(np.frombuffer(base, np.int8, region.count,
                                                    region.offset)[ends] < 0, 127, -127)
        for version in patch_format.VERSIONS:
            patches.append(create_patch(base, bytes(target), variant + 1, version=version))
        # Every record adaptive where it can be (positions unless all
        # change, values unless wider than 4 bytes): version 4's codes.
        records = diff_records(Source.of(base), Source.of(bytes(target)))
        for record in records:
            record.forced = True
            record.coding = codes.ALL if len(record.positions) == record.count \
                else codes.ADAPTIVE
            record.value_coding = patch_format.VALUES_ADAPTIVE
        patches.append(patch_format.encode(variant + 1, base, bytes(target), records, version=4))
        # Version 5's codes likewise: columns under rows of 1 to 6 elements,
        # saturating values on int8 (adaptive ones on wider elements).
        records = diff_records(Source.of(base), Source.of(bytes(target)))
        for record in records:
            record.forced = True
            if len(record.positions) == record.count:
                record.coding = codes.ALL
            else:
                record.coding, record.row = codes.COLUMNS, min(record.count, variant + 1)
            record.value_coding = patch_format.VALUES_SATURATING \
                if record.element_type == INT8 else patch_format.VALUES_ADAPTIVE
        patches.append(patch_format.encode(variant + 1, base, bytes(target), records, version=5))
    whole = bytearray(base)
    whole[100:104] = b"\x01\x02\x03\x04"   # anywhere at all: a whole file may differ
    for target in (bytes(whole), bytes(whole) + b"and longer"):
        for version in patch_format.VERSIONS:
            patches.append(create_whole_file_patch(Source.of(base), Source.of(target), 7,
                                                   version=version))
    return patches


def write(folder: str) -> list:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for n, patch in enumerate(seed_patches()):
        count = struct.unpack_from("<I", patch, 92)[0]
        body = patch[156:156 + struct.unpack_from("<I", patch, 96)[0]]   # unsigned: after the header
        for name, data in ((f"patch_{n}", b"\0" + patch),
                           (f"body_{n}", b"\1" + struct.pack("<H", count) + body)):
            path = os.path.join(folder, name)
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
    return paths


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
    print("\n".join(write(sys.argv[1] if len(sys.argv) > 1 else "corpus")))
