"""Performance benchmarks in one command; every figure is a ratio measured in one run.

    python -m benchmarks --quick --out=benchmarks/results/quick.json

Keys written:
  train_step_vs_fit, contribution_step_vs_fit, masked_step_vs_fit:
      the custom loop's throughput over `model.fit` on the same model and data
      (plain, with local-contribution accumulation, with a 1 % mask).
  position_bits_vs_bound, patch_vs_detools, patch_vs_bsdiff, patch_vs_best_generic,
  patch_vs_best_generic_worst_pair, patch_vs_gzip_full, patch_vs_tflite_full,
  patch_vs_bound, patch_vs_entropy_bound:
      the int8 patches of a real DPU run (MNIST MLP, k = 0.01, 8 rounds) against
      the alternatives on the same file pairs (totals over rounds; generic diffs
      at their best settings, decode-checked: benchmarks.generic_diffs); the entropy
      bound is, per record, log2 C(N, n) position bits plus n x the empirical
      entropy of the coded values, plus the fixed bytes (benchmarks.patch_size).
  patch_vs_nncodec, patch_vs_nncodec_worst_pair: the same rounds' patches over
      NNCodec's coder at its best settings, payload only (benchmarks.codecs,
      which also runs four more kinds of update).
  apply_mb_per_s_python, apply_mb_per_s_c: model megabytes patched per second.
  round_seconds_dpu_vs_fu: wall time of a DPU round over an FU round (same
      epochs in total: two steps of E against one of 2E; no export on either),
      rounds 2-7; dpu_extra_tracing_seconds: what DPU's first partial round
      adds once per process (tracing its two extra step variants).
  round_seconds_target_vs_fu: the same for `--target_gap=0.5` (its step 1
      runs FU's epochs, then it searches), and with one fine-tuning per round
      (`round_seconds_target_search_1_vs_fu`); round_seconds_split: per mode, the
      mean seconds of a round's training epochs (with their validation
      passes) and of the rest (selection, search screens, evaluation).
  bytes_target_vs_fixed_k, target_gap_test_points: `--target_gap=0.5` on the
      MNIST MLP against fixed-k DPU (benchmarks.bytes, quick subset).
  reference_run: the whole reference-protocol run as a process, split into
      start-up, first epoch, training and the rest (benchmarks.timing).
  int8_vs_float_max_gap_points: the largest |int8 - float| test accuracy of a round.
  scaling: patch bytes and apply times for 10k-1M parameters at k = 1 % (--quick),
      10k-10M at k = 0.1 %, 1 %, 10 % otherwise.
"""

import dataclasses
import json
import os
import platform
import tempfile

import numpy as np
from absl import app, flags

import tf_dpu  # noqa: F401  (Keras 2 before TensorFlow loads)
from tf_dpu.config import RunConfig
from tf_dpu.data import load_dataset

_QUICK = flags.DEFINE_bool("quick", False, "a few minutes on 2 cores: fewer epochs and repeats")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON to this file")


def main(argv):
    del argv
    from benchmarks import patch_size, throughput  # pylint: disable=import-outside-toplevel
    quick = _QUICK.value
    data = load_dataset("mnist", 300, seed=1)
    results = {"quick": quick, "machine": platform.machine(), "cpus": os.cpu_count()}
    results.update(throughput.measure(data, "mlp", repeats=5 if quick else 15))

    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(rounds=8, initial_samples=500, samples_per_round=500,
                           epochs=10 if quick else 30, seed=1, export_tflite=True,
                           out_dir=os.path.join(folder, "dpu"))
        dpu, files, patches = patch_size.run_files(config, data)
        table = patch_size.compare(files, patches)
        results.update(patch_size.ratios(table))
        sent = [r for r in range(1, len(files)) if patches[r] is not None]
        results.update(patch_size.apply_speed(files[sent[0] - 1], patches[sent[0]]))
        # The codec comparison on this run's rounds (benchmarks.codecs for all five pairs).
        from benchmarks import codecs  # pylint: disable=import-outside-toplevel
        cabac = codecs.deep_cabac()
        rows = [codecs.compare(files[r - 1], files[r], r, cabac) for r in sent]
        results.update({k: v for k, v in codecs.key_figures(rows).items()
                        if k.startswith("patch_vs_nncodec")})
    # Round timings without the export on either side: training work only.
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    plain = dataclasses.replace(config, export_tflite=False, out_dir=None)
    fu = run(dataclasses.replace(plain, method="fu"), progress=None, data=data)
    dpu_plain = run(plain, progress=None, data=data)
    target = run(dataclasses.replace(plain, target_gap=0.5), progress=None, data=data)
    searched_once = run(dataclasses.replace(plain, target_gap=0.5, target_search_steps=1),
                        progress=None, data=data)
    dpu_seconds = np.mean([r["seconds"] for r in dpu_plain.rounds[2:]])
    fu_seconds = np.mean([r["seconds"] for r in fu.rounds[2:]])
    results["round_seconds_dpu_vs_fu"] = round(float(dpu_seconds / fu_seconds), 3)
    results["round_seconds_target_vs_fu"] = round(float(
        np.mean([r["seconds"] for r in target.rounds[2:]]) / fu_seconds), 3)
    results["round_seconds_target_search_1_vs_fu"] = round(float(
        np.mean([r["seconds"] for r in searched_once.rounds[2:]]) / fu_seconds), 3)
    results["round_seconds_split"] = {
        name: {"training": round(float(np.mean([r["training_seconds"] for r in rounds])), 3),
               "other": round(float(np.mean([r["seconds"] - r["training_seconds"]
                                             for r in rounds])), 3)}
        for name, rounds in (("fu", fu.rounds[2:]), ("dpu", dpu_plain.rounds[2:]),
                             ("target 0.5", target.rounds[2:]),
                             ("target 0.5 search=1", searched_once.rounds[2:]))}
    results["dpu_extra_tracing_seconds"] = round(float(
        (dpu_plain.rounds[1]["seconds"] - fu.rounds[1]["seconds"])
        - (dpu_seconds - fu_seconds)), 2)
    results["int8_vs_float_max_gap_points"] = round(100 * max(
        abs(r["tflite_test_accuracy"] - r["test_accuracy"]) for r in dpu.rounds), 2)
    results["bytes_table"] = table
    from benchmarks import bytes as link_bytes, timing  # pylint: disable=import-outside-toplevel
    results.update(link_bytes.key_figures(link_bytes.measure(
        True, progress=lambda _: None, ratios=(0.01, 0.02, 0.05, 0.1))))
    results["reference_run"] = timing.time_run("flags/reference_mnist.flags")
    from benchmarks import scaling  # pylint: disable=import-outside-toplevel
    results["scaling"] = scaling.measure(("10k", "100k", "1M") if quick else
                                         ("10k", "100k", "1M", "10M"),
                                         (0.01,) if quick else (0.001, 0.01, 0.1))
    text = json.dumps(results, indent=2)
    print(text)
    print(patch_size.markdown(table))
    print(scaling.markdown(results["scaling"]))
    if _OUT.value:
        os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(_OUT.value)[0] + "_bytes.md", "w") as f:
            f.write(patch_size.markdown(table))
        with open(os.path.splitext(_OUT.value)[0] + "_scaling.md", "w") as f:
            f.write(scaling.markdown(results["scaling"]))


if __name__ == "__main__":
    app.run(main)
