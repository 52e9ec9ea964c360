"""Deployed int8 accuracy per round, with and without quantization-aware rounds.

    python -m benchmarks.int8 --out=benchmarks/results/int8_mnist

Runs the product default on the bundled MNIST digits (full round 0, k = 1 %,
30 epochs per step, 8 rounds) with the int8 export, once plain and once with
--qat, for each seed, and writes `<out>.json` and `<out>.md`.
"""

import json
import os
import tempfile

import numpy as np
from absl import app, flags

from tf_dpu import RunConfig
from tf_dpu.data import load_dataset

_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds to run")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "epochs per step")
_OUT = flags.DEFINE_string("out", "benchmarks/results/int8_mnist", "output path, no extension")


def main(argv):
    del argv
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    runs = []
    for seed in (int(s) for s in _SEEDS.value):
        data = load_dataset("mnist", 300, seed)
        for qat in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                config = RunConfig(rounds=8, initial_samples=500, samples_per_round=500,
                                   epochs=_EPOCHS.value, seed=seed, export_tflite=True, qat=qat,
                                   out_dir=folder)
                result = run(config, progress=None, data=data)
            runs.append({"seed": seed, "qat": qat,
                         "float": [r["test_accuracy"] for r in result.rounds],
                         "int8": [r["tflite_test_accuracy"] for r in result.rounds],
                         "sent_bytes": [r["sent_bytes"] for r in result.rounds]})
            print(f"seed {seed} qat={qat}: int8 mean over rounds 1-7 "
                  f"{100 * np.mean(runs[-1]['int8'][1:]):.2f} %", flush=True)
    lines = ["| | " + " | ".join(f"r{i}" for i in range(8)) + " | mean r1-7 |",
             "|---|" + "---|" * 9]
    for qat in (False, True):
        for key in ("float", "int8"):
            mean = 100 * np.mean([r[key] for r in runs if r["qat"] == qat], axis=0)
            label = f"{'QAT' if qat else 'plain'}: {'server (float' + (', fake-quant)' if qat else ')') if key == 'float' else 'device (int8, LiteRT)'}"
            lines.append(f"| {label} | " + " | ".join(f"{a:.1f}" for a in mean)
                         + f" | {np.mean(mean[1:]):.2f} |")
    table = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
