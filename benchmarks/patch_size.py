"""Bytes that cross the link, measured on real rounds, against what users do today.

For every consecutive pair of deployed `.tflite` files of a DPU run: our patch,
the whole file, gzip -9 of the whole file, every generic binary diff at its
best settings between the same two files, decode-checked
(`benchmarks.generic_diffs`: detools over all its algorithms, patch types
and compressions, bsdiff4, zstd with the base as dictionary, xz of the XOR),
and the information bound of the positions
(log2 C(N, n) bits for the n changed elements of each buffer) plus the raw
value bits. That last column bounds position coding only: a tool that
compresses the values (as detools' lzma does with value deltas) can go below it.

`entropy_bound` is the tighter yardstick: per record, log2 C(N, n) position
bits plus n times the empirical zeroth-order entropy of the values as coded
(zigzag deltas or raw values), plus the fixed bytes every patch carries
(header, record headers, checksum, signature).
"""

import gzip
import os
import subprocess
import tempfile
import time

import numpy as np

from benchmarks import generic_diffs, jvm

from tflite_edge import patch_format
from tflite_edge.apply import apply_patch
from tflite_edge.create import create_patch
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.positions import entropy_bound_bits

_C_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tflite_edge", "c")


def _zeroth_order_bits(values: np.ndarray) -> float:
    """n x the empirical entropy of the values' distribution."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def run_files(config, data):
    """A run's result, its deployed files and its patches (None where nothing was sent)."""
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    result = run(config, progress=None, data=data)
    files, patches = [], []
    for record in result.rounds:
        folder = os.path.join(config.out_dir, f"round_{record['round']:03d}")
        with open(os.path.join(folder, "model.tflite"), "rb") as f:
            files.append(f.read())
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            with open(patch, "rb") as f:
                patches.append(f.read())
        else:
            patches.append(None)
    return result, files, patches


def entropy_bound(patch: bytes, base: bytes) -> dict:
    """The patch's bytes against its entropy bound, with where the bits go.

    Returns:
      bound (bytes), fixed (bytes: header, signature, checksum and record
      headers), and per part (positions, kernel values, bias values) the
      coded bits and the bound's bits.
    """
    parsed = patch_format.decode(patch, base)
    streams = sum(r.position_bytes + r.value_bytes for r in parsed.records
                  if r.kind == patch_format.KIND_ELEMENTS)
    fixed = len(patch) - streams
    parts = {name: [0.0, 0.0] for name in ("positions", "kernel values", "bias values")}
    for record in parsed.records:
        if record.kind != patch_format.KIND_ELEMENTS:
            continue
        n = len(record.positions)
        parts["positions"][0] += 8 * record.position_bytes
        parts["positions"][1] += entropy_bound_bits(record.count, n)
        kind = "kernel values" if record.element_type in (3, 9) else "bias values"
        parts[kind][0] += 8 * (record.value_bytes if record.value_bytes else
                               n * ELEMENT_DTYPES[record.element_type].itemsize)
        parts[kind][1] += _zeroth_order_bits(record.values)
    bound = fixed + sum(b for _, b in parts.values()) / 8
    return {"patch": len(patch), "bound": bound, "fixed": fixed, "parts": parts}


def compare(files, patches) -> dict:
    """Sizes per round and totals; `files[r]`, `patches[r]` (None when nothing was sent)."""
    rows = []
    for r in range(1, len(files)):
        if patches[r] is None:
            continue
        parsed = patch_format.decode(patches[r], files[r - 1])
        position_bits = bound_positions = value_bits = 0.0
        for record in parsed.records:
            if record.kind != patch_format.KIND_ELEMENTS:
                continue
            position_bits += 8 * record.position_bytes
            bound_positions += entropy_bound_bits(record.count, len(record.positions))
            value_bits += 8 * len(record.positions) * ELEMENT_DTYPES[record.element_type].itemsize
        entropy = entropy_bound(patches[r], files[r - 1])
        # The same update in format 3, for devices that read nothing newer.
        version_3 = create_patch(files[r - 1], files[r], r, version=3)
        rows.append({
            "round": r, "patch": len(patches[r]), "patch_v3": len(version_3),
            "tflite": len(files[r]),
            "entropy_bound": round(entropy["bound"], 1),
            "entropy_parts": {k: [round(v[0]), round(v[1])] for k, v in entropy["parts"].items()},
            "gzip": len(gzip.compress(files[r], 9)),
            **_generic(files[r - 1], files[r]),
            "bound": int(np.ceil((bound_positions + value_bits) / 8)),
            "position_bits": position_bits, "bound_position_bits": bound_positions})
    total = {k: sum(row[k] for row in rows) for k in rows[0]
             if k not in ("round", "entropy_parts", "detools_setting", "best_tool")} if rows else {}
    return {"rows": rows, "total": total}


def _generic(base: bytes, target: bytes) -> dict:
    sizes = generic_diffs.compare(base, target)
    return {"detools": sizes["detools"], "detools_setting": sizes["detools_setting"],
            "bsdiff4": sizes["bsdiff4"], "zstd": sizes["zstd --patch-from (level 22)"],
            "xz_xor": sizes["xz -9e of the XOR"], "best_generic": sizes["best"],
            "best_tool": sizes["best_tool"]}


def ratios(table: dict) -> dict:
    t = table["total"]
    return {
        "position_bits_vs_bound": round(t["position_bits"] / t["bound_position_bits"], 4),
        "patch_vs_detools": round(t["patch"] / t["detools"], 4),
        "patch_vs_format_3": round(t["patch"] / t["patch_v3"], 4),
        "patch_format_3_vs_best_generic": round(t["patch_v3"] / t["best_generic"], 4),
        "patch_vs_bsdiff": round(t["patch"] / t["bsdiff4"], 4),
        "patch_vs_best_generic": round(t["patch"] / t["best_generic"], 4),
        "patch_vs_best_generic_worst_pair": round(max(
            row["patch"] / row["best_generic"] for row in table["rows"]), 4),
        "patch_vs_gzip_full": round(t["patch"] / t["gzip"], 4),
        "patch_vs_tflite_full": round(t["patch"] / t["tflite"], 4),
        "patch_vs_bound": round(t["patch"] / t["bound"], 4),
        "patch_vs_entropy_bound": round(t["patch"] / t["entropy_bound"], 4),
    }


def apply_speed(base: bytes, patch: bytes, repeats: int = 20) -> dict:
    """Model megabytes patched per second by the Python, C and JVM appliers."""
    started = time.perf_counter()
    for _ in range(repeats):
        apply_patch(base, patch, allow_unsigned=True)
    python_seconds = (time.perf_counter() - started) / repeats
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["make", "-s", "-C", _C_DIR, f"OUT={folder}"], check=True)
        paths = [os.path.join(folder, n) for n in ("base", "patch", "out")]
        for path, data in zip(paths, (base, patch)):
            with open(path, "wb") as f:
                f.write(data)
        c_seconds = float(subprocess.run(
            [os.path.join(folder, "dpu_apply"), "--allow_unsigned", "--bench", str(repeats * 5), *paths],
            check=True, capture_output=True, text=True).stdout)
        jar = jvm.build()
        jvm_seconds = jvm.bench(jar, paths[0], paths[1], repeats * 5)["seconds"] if jar else None
    megabytes = len(base) / 1e6
    out = {"apply_mb_per_s_python": round(megabytes / python_seconds, 2),
           "apply_mb_per_s_c": round(megabytes / c_seconds, 2)}
    if jvm_seconds:
        out["apply_mb_per_s_jvm"] = round(megabytes / jvm_seconds, 2)
    return out


def markdown(table: dict) -> str:
    lines = [f"| round | patch (format {patch_format.VERSION}) | format 3 | whole .tflite | "
             "gzip -9 | "
             "detools (best setting) | bsdiff4 | zstd, base as dictionary | xz of the XOR | "
             "best generic | patch / best generic | bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table["rows"] + [dict(table["total"], round="total")]:
        setting = f" ({row['detools_setting']})" if "detools_setting" in row else ""
        lines.append(f"| {row['round']} | {row['patch']:,} | {row['patch_v3']:,} | "
                     f"{row['tflite']:,} | "
                     f"{row['gzip']:,} | {row['detools']:,}{setting} | {row['bsdiff4']:,} | "
                     f"{row['zstd']:,} | {row['xz_xor']:,} | {row['best_generic']:,} | "
                     f"{row['patch'] / row['best_generic']:.3f} | {row['bound']:,} |")
    return "\n".join(lines) + "\n"
