"""Our patch against the neural-network coding standard and generic diffs, on the same updates.

    python -m benchmarks.codecs --out=benchmarks/results/codecs      # about 10 minutes on 2 cores
    python -m benchmarks.codecs --quick --out=/tmp/codecs            # MLP 1 % only

Five kinds of base -> target pair, the first three rounds that sent an
update (of rounds 1-6) in runs on the bundled MNIST
(product defaults, the int8 export, seed 1): the MLP at k = 1 % and 5 %,
the plain CNN at 1 %, DS-CNN at 1 % (1,000 initial samples, so that it
learns; each run's final test accuracy is recorded), and a warm-started
full update (`--method=fu --fu_init=last_round`, trained inside round 0's
int8 range like the partial methods, so that its files share their
quantization). For each pair, decode-checked to the exact
target:

* ours, format 5 (the default), 4 and 3, whole patches (header,
  checksum and record headers included; unsigned, as the other codecs'
  outputs carry no signature), and format 5's payload alone (the records,
  without the 188-byte header and checksum), the like-for-like figure
  beside NNCodec's payload;
* NNCodec 2.1.3's DeepCABAC core (Fraunhofer's implementation of ISO/IEC
  15938-17, `pip install --no-deps nncodec`; its Python wrappers import
  PyTorch, its coder does not): the integer delta of every weight and bias
  buffer coded as one layer (2-D kernels by output row), at the best of
  every setting that decodes to the exact delta: unary length 1-31, profile
  0 and 1 (row skipping), scan orders 0-4, and temporal context modelling
  (the base tensor as context). Only the coded payload counts: NNR's unit
  headers, which a real bitstream adds, are left out in NNCodec's favour;
* the best generic diff at its best settings (`benchmarks.generic_diffs`).

Keys: `patch_vs_nncodec` and `patch_vs_best_generic`, each the geometric
mean over pairs of format 5's bytes over the other's, and the worst pair;
`payload_vs_nncodec` likewise for format 5's payload; `format_4_vs_nncodec`
and `format_3_vs_nncodec` for the older formats.
"""

import json
import math
import os
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from benchmarks import generic_diffs
from tflite_edge import patch_format

# name: (RunConfig changes, initial samples)
PAIRS = {
    "MLP 1 %": (dict(model="mlp", update_ratio=0.01), 500),
    "MLP 5 %": (dict(model="mlp", update_ratio=0.05), 500),
    "CNN 1 %": (dict(model="cnn", update_ratio=0.01), 500),
    "DS-CNN 1 %": (dict(model="ds_cnn", update_ratio=0.01), 1000),
    "full update": (dict(model="mlp", method="fu", fu_init="last_round"), 500),
}
PAIRS_PER_RUN = 3
# What every unsigned patch carries besides its records: the header and the
# trailing checksum (PATCH_FORMAT.md).
ENVELOPE = patch_format.HEADER.size + patch_format.CHECKSUM_SIZE
MAX_ROUNDS = 7    # a round whose model loses on validation sends nothing


def deep_cabac():
    """NNCodec's coder and its 'tools off' options, or None when it is not installed."""
    try:
        from nncodec.extensions import deepCABAC  # pylint: disable=import-outside-toplevel
        from nncodec.nnc_core.hdsp.hdsp_tool import HDSP_OPTS_OFF  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return deepCABAC, HDSP_OPTS_OFF


def _nnc_layer(cabac, delta: np.ndarray, base: np.ndarray) -> Tuple[int, str]:
    """The fewest payload bytes NNCodec codes `delta` in, exactly, and the setting."""
    deep, tools_off = cabac
    best = None
    scans = (0, 1, 2, 3, 4) if delta.ndim == 2 else (0,)
    for unary in (1, 2, 4, 8, 10, 15, 20, 31):
        for profile in (0, 1):
            for temporal in ((0, 1) if profile else (0,)):
                for scan in scans:
                    rows = delta.shape[0]
                    skip = np.zeros(rows, np.int32)
                    row_skip = 0
                    if profile and delta.ndim == 2:
                        skip = np.array([0 if r.any() else 1 for r in delta], np.int32)
                        row_skip = 1
                    encoder = deep.Encoder()
                    encoder.initCtxModels(unary, 0)
                    args = (0, scan, profile, 0, row_skip, skip, *tools_off(), 0, 0)
                    try:
                        if temporal:
                            encoder.encodeLayer2(delta.copy(), base, *args)
                        else:
                            encoder.encodeLayer(delta.copy(), *args)
                        stream = bytes(encoder.finish())
                    except Exception:  # pylint: disable=broad-except
                        continue       # a combination the coder refuses
                    if best is not None and len(stream) >= best[0]:
                        continue
                    if _nnc_decodes(deep, tools_off, stream, delta, base, unary, profile,
                                    temporal, scan):
                        best = (len(stream), f"unary {unary}, profile {profile}, scan {scan}"
                                             f"{', temporal' if temporal else ''}")
    if best is None:
        raise AssertionError("no NNCodec setting decodes to the delta")
    return best


def _nnc_decodes(deep, tools_off, stream, delta, base, unary, profile, temporal, scan) -> bool:
    decoder = deep.Decoder()
    decoder.setStream(np.frombuffer(stream, np.uint8))
    decoder.initCtxModels(unary)
    out = np.zeros(delta.shape, np.int32)
    args = (0, scan, profile, 0, *tools_off(), 0, 0)
    try:
        if temporal:
            decoder.decodeLayer2(out, base, *args)
        else:
            decoder.decodeLayer(out, *args)
        decoder.finish()
    except Exception:  # pylint: disable=broad-except
        return False
    return bool(np.array_equal(out, delta))


def nncodec_bytes(cabac, base: bytes, target: bytes) -> Tuple[int, List[str]]:
    """NNCodec's payload for every changed weight and bias buffer, and the settings used."""
    from tflite_edge.model_file import ELEMENT_DTYPES, ModelFile  # pylint: disable=import-outside-toplevel
    from tflite_edge.regions import writable_regions  # pylint: disable=import-outside-toplevel
    model = ModelFile(base)
    total, settings = 0, []
    for region in sorted(writable_regions(base, len(base)).values(), key=lambda r: r.offset):
        dtype = ELEMENT_DTYPES[region.type]
        old = np.frombuffer(base, dtype, region.count, region.offset).astype(np.int64)
        new = np.frombuffer(target, dtype, region.count, region.offset).astype(np.int64)
        if np.array_equal(old, new):
            continue
        shape = model.tensors_of_buffer(region.buffer)[0].shape
        delta = (new - old).astype(np.int32)
        base_layer = old.astype(np.int32)
        if len(shape) >= 2:
            delta, base_layer = delta.reshape(shape[0], -1), base_layer.reshape(shape[0], -1)
        size, setting = _nnc_layer(cabac, delta, base_layer)
        total += size
        settings.append(setting)
    return total, settings


def run_pairs(name: str, data, folder: str) -> Tuple[List[Tuple[int, bytes, bytes]], float]:
    """(round, base, target) for the first PAIRS_PER_RUN rounds that changed the file, and
    the run's last test accuracy (that the model learns)."""
    from tf_dpu import RunConfig  # pylint: disable=import-outside-toplevel
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    changes, initial = PAIRS[name]
    out = os.path.join(folder, name.replace(" ", "_").replace("%", "pct"))
    config = RunConfig(dataset="mnist", rounds=MAX_ROUNDS, initial_samples=initial,
                       samples_per_round=500, seed=1, export_tflite=True, out_dir=out, **changes)
    result = run(config, progress=None, data=data)
    files = []
    for r in range(MAX_ROUNDS):
        with open(os.path.join(out, f"round_{r:03d}", "model.tflite"), "rb") as f:
            files.append(f.read())
    changed = [(r, files[r - 1], files[r]) for r in range(1, MAX_ROUNDS)
               if files[r] != files[r - 1]]
    return changed[:PAIRS_PER_RUN], result.rounds[-1]["test_accuracy"]


def compare(base: bytes, target: bytes, round_index: int, cabac) -> Dict[str, object]:
    """Every codec's decode-checked bytes for one pair."""
    from tflite_edge.apply import apply_patch  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    row: Dict[str, object] = {}
    for version in (5, 4, 3):
        patch = create_patch(base, target, round_index, version=version)
        if apply_patch(base, patch, allow_unsigned=True) != target:
            raise AssertionError("our patch does not rebuild the target")
        row[f"format_{version}"] = len(patch)
    row["format_5_payload"] = row["format_5"] - ENVELOPE
    generic = generic_diffs.compare(base, target)
    row["best_generic"], row["best_generic_tool"] = generic["best"], generic["best_tool"]
    if cabac is not None:
        row["nncodec"], row["nncodec_settings"] = nncodec_bytes(cabac, base, target)
    return row


def geometric_mean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def key_figures(rows: List[Dict]) -> Dict[str, Optional[float]]:
    out = {}
    for key, mine, other in (("patch_vs_nncodec", "format_5", "nncodec"),
                             ("patch_vs_best_generic", "format_5", "best_generic"),
                             ("payload_vs_nncodec", "format_5_payload", "nncodec"),
                             ("format_4_vs_nncodec", "format_4", "nncodec"),
                             ("format_3_vs_nncodec", "format_3", "nncodec")):
        ratios = [r[mine] / r[other] for r in rows if other in r]
        out[key] = round(geometric_mean(ratios), 4) if ratios else None
        out[key + "_worst_pair"] = round(max(ratios), 4) if ratios else None
    return out


def markdown(rows: List[Dict], figures: Dict) -> str:
    lines = ["| pair | round | ours, format 5 | its payload | format 4 | format 3 | "
             "NNCodec (payload only) | best generic diff | 5 / NNCodec | payload / NNCodec | "
             "5 / best generic |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nnc = f"{r['nncodec']:,}" if "nncodec" in r else "not installed"
        ratios = [f"{r[mine] / r['nncodec']:.3f}" if "nncodec" in r else ""
                  for mine in ("format_5", "format_5_payload")]
        lines.append(f"| {r['pair']} | {r['round']} | {r['format_5']:,} | "
                     f"{r['format_5_payload']:,} | {r['format_4']:,} | {r['format_3']:,} | "
                     f"{nnc} | {r['best_generic']:,} ({r['best_generic_tool']}) | "
                     f"{' | '.join(ratios)} | {r['format_5'] / r['best_generic']:.3f} |")
    lines += ["", ", ".join(f"`{k}` = {v}" for k, v in figures.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    import tf_dpu  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    from tf_dpu.data import load_dataset  # pylint: disable=import-outside-toplevel
    from tflite_edge.files import write_atomic  # pylint: disable=import-outside-toplevel
    values = flags.FLAGS
    cabac = deep_cabac()
    if cabac is None:
        print("NNCodec is not installed (pip install --no-deps nncodec): its column is empty",
              file=sys.stderr)
    data = load_dataset("mnist", 300, seed=1)
    names = ("MLP 1 %",) if values.quick else tuple(PAIRS)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            pairs, accuracy = run_pairs(name, data, folder)
            for round_index, base, target in pairs:
                rows.append({"pair": name, "round": round_index, "run_test_accuracy": accuracy,
                             **compare(base, target, round_index, cabac)})
                print(f"{name} round {round_index}: {rows[-1]}", flush=True)
    figures = key_figures(rows)
    text = markdown(rows, figures)
    print(text)
    write_atomic(values.out + ".json", (json.dumps({"quick": values.quick, **figures,
                                                    "rows": rows}, indent=2) + "\n").encode())
    write_atomic(values.out + ".md", text.encode())
    return 0


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
    absl_flags.DEFINE_string("out", "benchmarks/results/codecs",
                             "output path, no extension (.json and .md are written)")
    absl_flags.DEFINE_bool("quick", False, "the MLP at 1 % only")
    sys.exit(app.run(main))
