"""One run on one device, on two mirrored logical CPUs and on two loopback workers.

    python -m benchmarks.distributed --out=benchmarks/results/distributed

Runs the same DPU run (bundled MNIST digits, int8 export) three ways and
writes, per round, the selected and changed counts, how many changed kernel
elements the distributed runs share with the single-device run, the
accuracies, and whether the workers' copies are bit-identical. Writes
`<out>.json` and `<out>.md`. On one CPU this shows agreement, not speed: the
logical devices and the workers share the same cores.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from tf_dpu.local_cluster import launch
from tf_dpu.outputs import read_weights_file, round_dir

_ROUNDS = flags.DEFINE_integer("rounds", 5, "rounds")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "epochs per step")
_SEED = flags.DEFINE_integer("seed", 1, "seed")
_OUT = flags.DEFINE_string("out", "benchmarks/results/distributed", "output path, no extension")


def _weights(run_dir, index):
    return read_weights_file(round_dir(run_dir, index))


def _changed(run_dir, index):
    before, after = _weights(run_dir, index - 1), _weights(run_dir, index)
    return {k: after[k] != before[k] for k in after if after[k].ndim >= 2}


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)["rounds"]


def main(argv):
    del argv
    flags_ = ["--dataset=mnist", f"--rounds={_ROUNDS.value}", "--initial_samples=500",
              "--samples_per_round=500", f"--epochs={_EPOCHS.value}", f"--seed={_SEED.value}",
              "--export_tflite", "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: os.path.join(folder, name) for name in ("single", "mirrored", "workers")}
        train = [sys.executable, "-m", "tf_dpu.train", *flags_]
        subprocess.run(train + [f"--out_dir={runs['single']}"], check=True, env=env,
                       capture_output=True)
        subprocess.run(train + [f"--out_dir={runs['mirrored']}", "--strategy=mirrored",
                                "--logical_cpus=2"], check=True, env=env, capture_output=True)
        if launch(flags_ + [f"--out_dir={runs['workers']}"], workers=2, env=env,
                  quiet_chief=True):
            raise SystemExit("the multi-worker run failed")
        metrics = {name: _metrics(path) for name, path in runs.items()}
        rows = []
        for r, single in enumerate(metrics["single"]):
            row = {"round": r, "selected": single["selected_elements"]}
            for name in runs:
                record = metrics[name][r]
                row[name] = {"updated": record["updated_elements"],
                             "val": record["val_accuracy"], "test": record["test_accuracy"],
                             "int8_test": record["tflite_test_accuracy"]}
                if r and name != "single" and not single["full_round"]:
                    mine, theirs = _changed(runs["single"], r), _changed(runs[name], r)
                    row[name]["common"] = int(sum(np.count_nonzero(mine[k] & theirs[k])
                                                  for k in mine))
            rows.append(row)
        copy = os.path.join(runs["workers"], "workers", "1")
        identical = all(
            all(np.array_equal(a.view(np.uint32), b.view(np.uint32))
                for a, b in zip(_weights(copy, r).values(), _weights(runs["workers"], r).values()))
            for r in range(_ROUNDS.value))
    lines = ["| round | selected | updated: 1 device / mirrored / workers | common with 1 device: "
             "mirrored / workers | test %: 1 device / mirrored / workers |",
             "|---|---:|---|---|---|"]
    for row in rows:
        s, m, w = row["single"], row["mirrored"], row["workers"]
        common = (f"{m['common']} / {w['common']}" if "common" in m else "(full round)")
        lines.append(f"| {row['round']} | {row['selected']:,} | {s['updated']:,} / "
                     f"{m['updated']:,} / {w['updated']:,} | {common} | "
                     f"{100 * s['test']:.2f} / {100 * m['test']:.2f} / {100 * w['test']:.2f} |")
    lines.append(f"\nWorker 1's weights bit-identical to the chief's in every round: {identical}.")
    table = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump({"rounds": rows, "workers_identical": identical}, f, indent=1)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
