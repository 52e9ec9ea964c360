"""Performance benchmarks in one command; every figure is a ratio measured in one run.

    python -m benchmarks --quick --out=benchmarks/results/quick.json

Keys written:
  train_step_vs_fit, contribution_step_vs_fit, masked_step_vs_fit:
      the custom loop's throughput over `model.fit` on the same model and data
      (plain, with local-contribution accumulation, with a 1 % mask).
"""

import json
import os
import platform

from absl import app, flags

import tf_dpu  # noqa: F401  (Keras 2 before TensorFlow loads)
from tf_dpu.data import load_dataset

_QUICK = flags.DEFINE_bool("quick", False, "a few minutes on 2 cores: MLP only, fewer repeats")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON to this file")


def main(argv):
    del argv
    from benchmarks import throughput  # pylint: disable=import-outside-toplevel
    data = load_dataset("mnist", 300, seed=0)
    results = {"quick": _QUICK.value, "machine": platform.machine(),
               "cpus": os.cpu_count()}
    results.update(throughput.measure(data, "mlp", repeats=5 if _QUICK.value else 15))
    if not _QUICK.value:
        cnn = throughput.measure(data, "cnn", repeats=5)
        results.update({f"cnn_{k}": v for k, v in cnn.items() if k.endswith("_vs_fit")})
    text = json.dumps(results, indent=2)
    print(text)
    if _OUT.value:
        os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
