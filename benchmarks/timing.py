"""Where the wall time of a whole run goes: start-up, training, the rest.

    python -m benchmarks.timing                      # the reference protocol, DPU, k = 1 %
    python -m benchmarks.timing --run_flagfile=flags/quickstart.flags --repeats=3

Runs `python -m tf_dpu.train` as a user does (a fresh process, `--quiet`
off so each line can be timed as it arrives) and splits its wall time:

* start-up: process start to the first round's first line (interpreter,
  TensorFlow import, data, model);
* first epoch: the first epoch line of round 0 (graph tracing included);
* training: the rounds' own `seconds` (training, validation, selection);
* the rest: writing the run folder (weights, metrics, TensorBoard, plot)
  and exiting.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_run(flagfile: str, extra=()) -> dict:
    """Runs one training process and returns its phases in seconds."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "run")
        command = [sys.executable, "-m", "tf_dpu.train", f"--flagfile={flagfile}",
                   f"--out_dir={out}", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        started = time.perf_counter()
        first_round = first_epoch = None
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=_ROOT, env=env) as proc:
            for line in proc.stdout:
                now = time.perf_counter() - started
                if first_round is None and line.startswith("round 0:"):
                    first_round = now
                if first_epoch is None and " epoch 1/" in line:
                    first_epoch = now
        total = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode})")
        with open(os.path.join(out, "metrics.json")) as f:
            rounds = json.load(f)["rounds"]
    training = sum(r["seconds"] for r in rounds)
    return {"total_seconds": round(total, 2), "startup_seconds": round(first_round, 2),
            "first_epoch_seconds": round(first_epoch - first_round, 2),
            "training_seconds": round(training, 2),
            "rest_seconds": round(total - first_round - training, 2)}


def main(argv):
    del argv
    runs = [time_run(flags.FLAGS.run_flagfile) for _ in range(flags.FLAGS.repeats)]
    fastest = min(runs, key=lambda r: r["total_seconds"])
    print(json.dumps({**fastest, "runs": len(runs),
                      "slowest_total_seconds": max(r["total_seconds"] for r in runs)}, indent=1))


if __name__ == "__main__":
    # Flags only for the command line: benchmarks.__main__ imports time_run().
    flags.DEFINE_string("run_flagfile", "flags/reference_mnist.flags", "the run to time")
    flags.DEFINE_integer("repeats", 1, "runs to time (the fastest is kept)")
    app.run(main)
