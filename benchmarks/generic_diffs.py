"""Generic binary diffs at their best settings, each decode-checked to the exact target.

What a user could send instead of our patch, between the same two `.tflite`
files: detools with every algorithm (bsdiff, hdiffpatch, match-blocks), patch
type (sequential, hdiffpatch, in-place) and compression (lzma, zstd, bz2,
heatshrink, crle) it accepts; bsdiff4; zstandard at level 22 with the base as
its dictionary (what `zstd --patch-from` does); and xz -9e of the XOR of the
two files. A size counts only if the tool's own decoder rebuilds the target
from the base byte for byte.

    python -m benchmarks.generic_diffs --out=benchmarks/results/generic_diffs

runs the quick benchmark's DPU run (MNIST MLP, k = 1 %, 8 rounds of 10
epochs, seed 1, the int8 export) and writes, per round, our patch (the
default format, and the same update in format 3) against every tool, and
each applier's throughput on the last round in every format (OUT.json,
OUT.md);
`python -m benchmarks --quick` measures the same table inside its run.
"""

import io
import itertools
import json
import lzma
import os
import sys
import tempfile
from typing import Callable, Dict, Optional, Tuple

DETOOLS_ALGORITHMS = ("bsdiff", "hdiffpatch", "match-blocks")
DETOOLS_TYPES = ("sequential", "hdiffpatch", "in-place")
DETOOLS_COMPRESSIONS = ("lzma", "zstd", "bz2", "heatshrink", "crle")
_SEGMENT = 4096


def _detools_one(base_path: str, target_path: str, base: bytes, target: bytes, algorithm: str,
                 patch_type: str, compression: str) -> Optional[int]:
    """The decode-checked size of one detools setting; None if detools refuses it."""
    import detools  # pylint: disable=import-outside-toplevel
    extra = {}
    if patch_type == "in-place":
        memory = (max(len(base), len(target)) // _SEGMENT + 2) * _SEGMENT
        extra = {"memory_size": memory, "segment_size": _SEGMENT}
    out = io.BytesIO()
    try:
        with open(base_path, "rb") as ffrom, open(target_path, "rb") as fto:
            detools.create_patch(ffrom, fto, out, compression=compression, patch_type=patch_type,
                                 algorithm=algorithm, **extra)
    except Exception:  # detools raises several types for unsupported combinations
        return None
    patch = out.getvalue()
    if patch_type == "in-place":
        memory = io.BytesIO(base + bytes(extra["memory_size"] - len(base)))
        detools.apply_patch_in_place(memory, io.BytesIO(patch))
        rebuilt = memory.getvalue()[:len(target)]
    else:
        rebuilt_io = io.BytesIO()
        with open(base_path, "rb") as ffrom:
            detools.apply_patch(ffrom, io.BytesIO(patch), rebuilt_io)
        rebuilt = rebuilt_io.getvalue()
    if rebuilt != target:
        raise AssertionError(f"detools {algorithm}/{patch_type}/{compression} does not "
                             "rebuild the target")
    return len(patch)


def detools_best(base: bytes, target: bytes) -> Tuple[int, str]:
    """(bytes, setting) of the smallest decode-checked detools patch."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, name) for name in ("base", "target")]
        for path, data in zip(paths, (base, target)):
            with open(path, "wb") as f:
                f.write(data)
        sizes = {}
        for setting in itertools.product(DETOOLS_ALGORITHMS, DETOOLS_TYPES,
                                         DETOOLS_COMPRESSIONS):
            size = _detools_one(*paths, base, target, *setting)
            if size is not None:
                sizes["/".join(setting)] = size
    best = min(sizes, key=sizes.get)
    return sizes[best], best


def _bsdiff4(base: bytes, target: bytes) -> bytes:
    import bsdiff4  # pylint: disable=import-outside-toplevel
    patch = bsdiff4.diff(base, target)
    assert bsdiff4.patch(base, patch) == target
    return patch


def _zstd_dictionary(base: bytes, target: bytes) -> bytes:
    import zstandard  # pylint: disable=import-outside-toplevel
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(
        22, source_size=len(target), window_log=max(10, (len(base) + len(target)).bit_length()),
        enable_ldm=True)
    patch = zstandard.ZstdCompressor(compression_params=params,
                                     dict_data=dictionary).compress(target)
    rebuilt = zstandard.ZstdDecompressor(dict_data=dictionary,
                                         max_window_size=1 << 31).decompress(patch)
    assert rebuilt == target
    return patch


def _xz_xor(base: bytes, target: bytes) -> bytes:
    if len(base) != len(target):
        raise ValueError("different sizes")
    xor = (int.from_bytes(base, "little") ^ int.from_bytes(target, "little")).to_bytes(
        len(base), "little")
    patch = lzma.compress(xor, preset=9 | lzma.PRESET_EXTREME)
    rebuilt = (int.from_bytes(base, "little") ^ int.from_bytes(lzma.decompress(patch),
                                                                "little")).to_bytes(
        len(base), "little")
    assert rebuilt == target
    return patch


OTHERS: Dict[str, Callable[[bytes, bytes], bytes]] = {
    "bsdiff4": _bsdiff4, "zstd --patch-from (level 22)": _zstd_dictionary,
    "xz -9e of the XOR": _xz_xor}


def compare(base: bytes, target: bytes) -> Dict[str, object]:
    """Every generic tool's decode-checked bytes, and the best of them with its name."""
    sizes: Dict[str, object] = {}
    size, setting = detools_best(base, target)
    sizes["detools"] = size
    sizes["detools_setting"] = setting
    for name, tool in OTHERS.items():
        try:
            sizes[name] = len(tool(base, target))
        except ValueError:
            continue
    candidates = {k: v for k, v in sizes.items() if k != "detools_setting"}
    best = min(candidates, key=candidates.get)
    sizes["best"] = candidates[best]
    sizes["best_tool"] = setting if best == "detools" else best
    return sizes


def main(argv) -> int:
    """The command line (flags defined only when run as a program)."""
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    import tf_dpu  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    from benchmarks import patch_size  # pylint: disable=import-outside-toplevel
    from tf_dpu.config import RunConfig  # pylint: disable=import-outside-toplevel
    from tf_dpu.data import load_dataset  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    from tflite_edge import patch_format  # pylint: disable=import-outside-toplevel
    values = flags.FLAGS
    data = load_dataset("mnist", 300, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(rounds=values.rounds, initial_samples=500, samples_per_round=500,
                           epochs=values.epochs, seed=1, export_tflite=True,
                           out_dir=os.path.join(folder, "dpu"))
        _, files, patches = patch_size.run_files(config, data)
    table = patch_size.compare(files, patches)
    # Apply throughput of each applier on the last round, in every format.
    last = max(r for r in range(1, len(files)) if patches[r] is not None)
    speeds = {f"format_{v}": patch_size.apply_speed(
        files[last - 1], create_patch(files[last - 1], files[last], last, version=v))
        for v in patch_format.VERSIONS}
    results = {"rounds": values.rounds, "epochs": values.epochs, **patch_size.ratios(table),
               "apply_speed": speeds, "bytes_table": table}
    text = patch_size.markdown(table) + "\nApply throughput (model MB per second, round " \
        f"{last}): " + "; ".join(f"{name.replace('_', ' ')}: " + ", ".join(
            f"{k.rsplit('_', 1)[1]} {v}" for k, v in s.items()) for name, s in speeds.items()) \
        + "\n"
    print(text)
    print(json.dumps(patch_size.ratios(table), indent=2))
    os.makedirs(os.path.dirname(values.out) or ".", exist_ok=True)
    with open(values.out + ".json", "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    with open(values.out + ".md", "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
    absl_flags.DEFINE_string("out", "benchmarks/results/generic_diffs",
                             "output path, no extension (.json and .md are written)")
    absl_flags.DEFINE_integer("rounds", 8, "rounds of the DPU run", lower_bound=2)
    absl_flags.DEFINE_integer("epochs", 10, "epochs per step", lower_bound=1)
    sys.exit(app.run(main))
