"""Reproduces the reference protocol on the bundled MNIST digits and tabulates it.

    python -m benchmarks.reproduce --flagfile=flags/reference_mnist.flags \
        --out=benchmarks/results/reproduce_mnist

takes the protocol from the flag file (every `tf_dpu.train` flag applies), and
runs FU (same_init), DPU, GCPU, RPU and Pruning for every ratio and seed, plus the product default (a full round 0) for FU,
DPU and RPU, and writes `<out>.json` (every round of every run) and `<out>.md`
(the round-averaged gaps to FU beside the reference code's figures).
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks.tables import mean_sd

from tf_dpu import RunConfig, train
from tf_dpu.data import load_dataset

_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds to run")
_RATIOS = flags.DEFINE_list("ratios", ["0.01", "0.005"], "update ratios k")
_METHODS = flags.DEFINE_list("methods", ["dpu", "gcpu", "rpu", "pruning"],
                             "partial methods (FU always runs)")
_PRODUCT = flags.DEFINE_bool("product_default", True,
                             "also run a full round 0 (the deployment default)")
_OUT = flags.DEFINE_string("out", "benchmarks/results/reproduce_mnist",
                           "output path without extension")

# The reference code on the same data and protocol (shared docs, measured):
# mean ± sd over seeds 1-3 of the average over rounds 0-7 of (method - FU).
REFERENCE = {
    0.01: {"dpu": (-2.18, 0.49), "gcpu": (-2.30, 0.82), "rpu": (-5.72, 0.68),
           "pruning": (-7.05, 0.74)},
    0.005: {"dpu": (-4.76, 0.55), "gcpu": (-5.21, 0.68), "rpu": (-10.00, 1.26),
            "pruning": (-23.69, 4.52)},
}
REFERENCE_ROUNDS_1_7 = {"dpu": -1.67, "gcpu": -0.77, "rpu": -3.97, "pruning": -6.20}
REFERENCE_FU_MEAN = 92.28


def gaps(runs, method, ratio, deployment, first_round=0):
    """Per seed: mean over rounds of (method - FU same seed), in points."""
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        fu = _accuracies(runs, "fu", None, deployment, seed)
        other = _accuracies(runs, method, ratio, deployment, seed)
        if fu is not None and other is not None:
            out.append(100 * float(np.mean(other[first_round:] - fu[first_round:])))
    return out


def _accuracies(runs, method, ratio, deployment, seed):
    for r in runs:
        if (r["method"], r["ratio"], r["deployment"], r["seed"]) == (method, ratio, deployment,
                                                                     seed):
            return np.array(r["test_accuracy"])
    return None


def markdown(runs, ratios, methods) -> str:
    lines = ["### Reference protocol (partial round 0), average over rounds 0-7 of "
             "(method - FU), test accuracy points, mean ± sd over seeds", "",
             "| method | " + " | ".join(f"k = {k:g}: this project | k = {k:g}: reference"
                                       for k in ratios) + " | k = 0.01, rounds 1-7: this "
             "project | reference |",
             "|---|" + "---|---|" * len(ratios) + "---|---|"]
    for m in methods:
        cells = []
        for k in ratios:
            ref = REFERENCE.get(k, {}).get(m)
            cells += [mean_sd(gaps(runs, m, k, "partial")),
                      f"{ref[0]:+.2f} ± {ref[1]:.2f}" if ref else "n/a"]
        late = gaps(runs, m, 0.01, "partial", first_round=1)
        cells += [mean_sd(late), f"{REFERENCE_ROUNDS_1_7[m]:+.2f}" if m in REFERENCE_ROUNDS_1_7
                  else "n/a"]
        lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
    fu = [np.mean(r["test_accuracy"]) * 100 for r in runs
          if r["method"] == "fu" and r["deployment"] == "partial"]
    lines += ["", f"FU (same_init) averaged {np.mean(fu):.2f} % over rounds and seeds "
              f"(reference: {REFERENCE_FU_MEAN:.2f} %)."]
    product = [r for r in runs if r["deployment"] == "full"]
    if product:
        lines += ["", "### Product default (full round 0, Keras initializer, no "
                  "re-initialization), k = 0.01, average over rounds 1-7 of (method - FU)", "",
                  "| method | gap to FU |", "|---|---|"]
        for m in ("dpu", "rpu"):
            lines.append(f"| {m.upper()} | {mean_sd(gaps(product, m, 0.01, 'full', 1))} |")
    per_round = {}
    for m in ["fu"] + list(methods):
        k = None if m == "fu" else 0.01
        accs = [np.array(r["test_accuracy"]) for r in runs
                if (r["method"], r["ratio"], r["deployment"]) == (m, k, "partial")]
        if accs:
            per_round[m] = 100 * np.mean(accs, axis=0)
    lines += ["", "### Per-round test accuracy (%), k = 0.01, mean over seeds", "",
              "| method | " + " | ".join(f"r{i}" for i in range(8)) + " |",
              "|---|" + "---|" * 8]
    for m, accs in per_round.items():
        lines.append(f"| {m.upper()} | " + " | ".join(f"{a:.1f}" for a in accs) + " |")
    seconds = [r["seconds"] for r in runs if r["method"] == "dpu" and r["deployment"] == "partial"]
    if seconds:
        lines += ["", f"Wall time of one whole DPU run (8 rounds, training only): "
                  f"{np.mean(seconds):.1f} s on average (reference code: about 30 s)."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    seeds = [int(s) for s in _SEEDS.value]
    ratios = [float(k) for k in _RATIOS.value]
    protocol = train.config_from_flags()
    data = {s: load_dataset(protocol.dataset, protocol.validation_samples, s) for s in seeds}
    jobs = []
    for seed in seeds:
        jobs.append(("fu", None, "partial", seed))
        for k in ratios:
            jobs += [(m, k, "partial", seed) for m in _METHODS.value]
        if _PRODUCT.value:
            jobs += [("fu", None, "full", seed), ("dpu", 0.01, "full", seed),
                     ("rpu", 0.01, "full", seed)]
    runs = []
    for i, (method, ratio, deployment, seed) in enumerate(jobs):
        config = dataclasses.replace(
            protocol, method=method, update_ratio=ratio or 0.01, seed=seed,
            initial_deployment=deployment, out_dir=None, contribution_mix=None,
            reinit="auto", fu_init="same_init")
        if deployment == "full":  # the product's own defaults, not the reference's
            config = dataclasses.replace(config, initializer=RunConfig.initializer)
        started = time.time()
        result = run(config, progress=None, data=data[seed])
        runs.append({"method": method, "ratio": ratio, "deployment": deployment, "seed": seed,
                     "seconds": round(time.time() - started, 2),
                     "test_accuracy": [r["test_accuracy"] for r in result.rounds],
                     "updated_elements": [r["updated_elements"] for r in result.rounds],
                     "sent": [r["sent"] for r in result.rounds],
                     "reinitialized": [r["reinitialized"] for r in result.rounds]})
        print(f"[{i + 1}/{len(jobs)}] {method} k={ratio} round0={deployment} seed={seed}: "
              f"mean test {100 * np.mean(runs[-1]['test_accuracy']):.2f} % "
              f"({runs[-1]['seconds']:.1f} s)", flush=True)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump({"protocol": protocol.to_dict(), "runs": runs}, f, indent=1)
    table = markdown(runs, ratios, _METHODS.value)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main, flags_parser=train.parse_flags)
