"""The models people deploy, end to end on the bundled MNIST: bytes, int8, runtimes, appliers.

    python -m benchmarks.edge --out=benchmarks/results/edge

For `mobilenet` (width 0.25), `ds_cnn`, `resnet8` and a small model of the
user's kind (Conv2D/BN/ReLU6, DepthwiseConv2D/BN/ReLU6, 1x1 Conv2D/BN/ReLU6,
global average pooling, Dense; saved as `.keras` and given as
`--model=PATH`), at the product defaults (full round 0, k = 1 %, 8 rounds,
int8 export, BatchNorm frozen after round 0) and one seed. The first model is
trained on 2,000 digits and 250 arrive per round (`--initial_samples`,
`--samples_per_round`): partial updating is for a deployed model that
already works (MobileNet on 500 digits is still near 50 %, and 1 % of its
kernels per round cannot make up for that; `--models=mobilenet
--initial_samples=500 --samples_per_round=500` measures it):

* parameters, `.tflite` bytes, patch bytes per sent round and as a share of
  the file;
* int8 (LiteRT, on the device's file) vs float test accuracy, every round;
* TFLite Micro vs LiteRT on the last file, over the test set: the largest
  difference of an int8 logit against LiteRT's reference kernels (the
  arithmetic TFLite Micro implements) and against its optimized kernels
  (what phones run), and how often the latter pick the same class;
* DPU vs FU (same seed, data and epochs; FU from the same init): the mean
  gap over rounds 1-7, with the standard error over those rounds;
* the patch chain applied by the Python, C and JVM appliers: each round's
  file reproduced byte for byte;
* the target checks (edgetpu, tflm, litert) of the last file;
* `--bias_policy=full` on ResNet-8: what training BatchNorm in partial rounds
  costs in bytes (it changes whole channels of the folded file).

Writes `<out>.json` and `<out>.md`.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

import tf_dpu  # noqa: F401  (Keras 2 before TensorFlow loads)
from benchmarks.chain import reproduce_chain
from benchmarks.user_model import user_model

_OUT = flags.DEFINE_string("out", "benchmarks/results/edge", "output path, no extension")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "rounds per run")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "epochs per step")
_SEED = flags.DEFINE_integer("seed", 1, "seed of every run")
_INITIAL = flags.DEFINE_integer("initial_samples", 2000, "digits behind the first model")
_PER_ROUND = flags.DEFINE_integer("samples_per_round", 250, "new digits per round")
_MODELS = flags.DEFINE_list("models", ["mobilenet", "ds_cnn", "resnet8", "user", "keras3"],
                            "which models to run (user: the .keras model below, saved by "
                            "tf_keras; keras3: the same model saved by Keras 3)")
_IO = flags.DEFINE_enum("tflite_io", "int8", ["int8", "uint8"], "the files' input and output "
                        "type (uint8: Coral's convention)")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(model: str, method: str, out_dir: str, **extra) -> dict:
    args = [sys.executable, "-m", "tf_dpu.train", "--dataset=mnist", f"--model={model}",
            f"--method={method}", f"--rounds={_ROUNDS.value}", f"--epochs={_EPOCHS.value}",
            f"--seed={_SEED.value}", f"--out_dir={out_dir}", "--quiet",
            f"--initial_samples={_INITIAL.value}", f"--samples_per_round={_PER_ROUND.value}"]
    args += [f"--{k}={v}" for k, v in extra.items()]
    done = subprocess.run(args, capture_output=True, text=True, cwd=_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{model} {method}: {done.stderr.strip()[-500:]}")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return json.load(f)


def _runtimes(model_file: bytes, x_raw: np.ndarray) -> dict:
    """LiteRT (optimized and reference kernels) against TFLite Micro over the test set."""
    from tflite_edge import runtime  # pylint: disable=import-outside-toplevel
    micro = runtime.micro_logits(model_file, x_raw).astype(np.int32)
    optimized = runtime.logits(model_file, x_raw).astype(np.int32)
    reference = runtime.logits(model_file, x_raw, reference_kernels=True).astype(np.int32)
    return {"reference_kernels_max_step": int(np.abs(reference - micro).max()),
            "optimized_max_step": int(np.abs(optimized - micro).max()),
            "optimized_same_class": round(float(np.mean(optimized.argmax(1)
                                                        == micro.argmax(1))), 4)}


def measure(folder: str) -> dict:
    from benchmarks import jvm  # pylint: disable=import-outside-toplevel
    from tf_dpu.data import load_dataset  # pylint: disable=import-outside-toplevel
    from tflite_edge.check import check  # pylint: disable=import-outside-toplevel
    data = load_dataset("mnist", 300, _SEED.value)
    x_raw = data.preprocessing.to_raw(data.x_test)
    subprocess.run(["make", "-s", "-C", os.path.join(_ROOT, "tflite_edge", "c"),
                    f"OUT={folder}"], check=True)
    c_applier, jar = os.path.join(folder, "dpu_apply"), jvm.build()
    user_path = os.path.join(folder, "user_model.keras")
    user_model(seed=_SEED.value).save(user_path)
    keras3_path = os.path.join(folder, "keras3", "user_model.keras")
    os.makedirs(os.path.dirname(keras3_path))
    user_model(seed=_SEED.value, keras_version=3).save(keras3_path)
    rows = {}
    chosen = [(name, model) for name, model in (
        ("mobilenet", "mobilenet"), ("ds_cnn", "ds_cnn"), ("resnet8", "resnet8"),
        ("user model (.keras)", user_path), ("keras3 user model (.keras)", keras3_path))
        if name.split()[0] in _MODELS.value]
    for name, model in chosen:
        dpu_dir = os.path.join(folder, name.split()[0] + "_dpu")
        dpu = _run(model, "dpu", dpu_dir, export_tflite="true", tflite_io=_IO.value)
        fu = _run(model, "fu", os.path.join(folder, name.split()[0] + "_fu"))
        rounds = dpu["rounds"]
        sent = [r["patch_bytes"] for r in rounds[1:] if r["sent"]]
        gaps = [100 * (d["test_accuracy"] - f["test_accuracy"])
                for d, f in zip(rounds[1:], fu["rounds"][1:])]
        last = open(os.path.join(dpu_dir, f"round_{len(rounds) - 1:03d}", "model.tflite"),
                    "rb").read()
        rows[name] = {
            "parameters": rounds[0]["parameters"], "kernel_elements": rounds[0]["total_elements"],
            "tflite_bytes": rounds[0]["tflite_bytes"],
            "patch_bytes": sent,
            "patch_fraction_max": round(max(sent) / rounds[0]["tflite_bytes"], 4) if sent else None,
            "float": [round(100 * r["test_accuracy"], 2) for r in rounds],
            "int8": [round(100 * r["tflite_test_accuracy"], 2) for r in rounds],
            "int8_vs_float_max": round(max(abs(r["tflite_test_accuracy"] - r["test_accuracy"])
                                           for r in rounds) * 100, 2),
            "fu": [round(100 * r["test_accuracy"], 2) for r in fu["rounds"]],
            "dpu_vs_fu": round(float(np.mean(gaps)), 2),
            "dpu_vs_fu_standard_error": round(float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))), 2),
            "litert_vs_tflm": _runtimes(last, x_raw),
            "chain": reproduce_chain(dpu_dir, len(rounds), c_applier, jar),
            "targets": {t: check(last, t)[1] for t in ("edgetpu", "tflm", "litert")},
        }
        print(name, json.dumps(rows[name]), flush=True)
    result = {"rows": rows, "seed": _SEED.value, "rounds": _ROUNDS.value,
              "epochs": _EPOCHS.value, "initial_samples": _INITIAL.value,
              "samples_per_round": _PER_ROUND.value}
    if "resnet8" in _MODELS.value:
        full = _run("resnet8", "dpu", os.path.join(folder, "resnet8_full"),
                    export_tflite="true", bias_policy="full")
        result["resnet8_bias_policy_full"] = {
            "patch_bytes": [r["patch_bytes"] for r in full["rounds"][1:] if r["sent"]],
            "tflite_bytes": full["rounds"][0]["tflite_bytes"],
            "float": [round(100 * r["test_accuracy"], 2) for r in full["rounds"]]}
    return result


def markdown(result: dict) -> str:
    last = result["rounds"] - 1
    lines = [f"Bundled MNIST, {result['initial_samples']:,} digits behind the first model, "
             f"{result['samples_per_round']:,} new per round; product defaults (full round 0, "
             f"k = 1 %, {result['rounds']} rounds, "
             f"{result['epochs']} epochs per step, BatchNorm frozen after round 0), seed "
             f"{result['seed']}; FU from the same initialization with the same data and "
             f"epochs; gap = mean over rounds 1-{last} of (DPU - FU) test accuracy, ± the standard "
             "error over those rounds.\n",
             "| model | parameters | .tflite | patch per round (max, share of file) | "
             f"int8 vs float (max, any round) | float test, round 0 / {last} | DPU - FU, rounds 1-{last} | "
             "TFLM vs LiteRT reference kernels (max int8 step) | TFLM vs LiteRT optimized "
             "(max step, same class) | chain reproduced (Python, C, JVM) | Edge TPU, TFLM, "
             "LiteRT checks |",
             "|---|---:|---:|---|---:|---|---:|---:|---|---|---|"]
    for name, r in result["rows"].items():
        patch = (f"{max(r['patch_bytes']):,} B ({100 * r['patch_fraction_max']:.1f} %)"
                 if r["patch_bytes"] else "none sent")
        chain = ", ".join("yes" if r["chain"][k] else "NO" for k in ("python", "c", "jvm"))
        targets = ", ".join("pass" if r["targets"][k] else "FAIL"
                            for k in ("edgetpu", "tflm", "litert"))
        lines.append(f"| {name} | {r['parameters']:,} | {r['tflite_bytes']:,} | {patch} | "
                     f"{r['int8_vs_float_max']:.2f} | {r['float'][0]:.1f} / {r['float'][-1]:.1f} | "
                     f"{r['dpu_vs_fu']:+.2f} ± {r['dpu_vs_fu_standard_error']:.2f} | "
                     f"{r['litert_vs_tflm']['reference_kernels_max_step']} | "
                     f"{r['litert_vs_tflm']['optimized_max_step']}, "
                     f"{100 * r['litert_vs_tflm']['optimized_same_class']:.1f} % | "
                     f"{chain} | {targets} |")
    full = result.get("resnet8_bias_policy_full", {"patch_bytes": []})
    if full["patch_bytes"]:
        lines.append(f"\nResNet-8 with `--bias_policy=full` (BatchNorm trained in partial rounds): "
                     f"patches of {min(full['patch_bytes']):,} to {max(full['patch_bytes']):,} "
                     f"bytes, {100 * max(full['patch_bytes']) / full['tflite_bytes']:.0f} % of "
                     "the file at most, against the frozen default above.")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as folder:
        result = measure(folder)
    from tflite_edge.files import write_atomic  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    write_atomic(_OUT.value + ".json", (json.dumps(result, indent=1) + "\n").encode())
    table = markdown(result)
    write_atomic(_OUT.value + ".md", table.encode())
    print(table)


if __name__ == "__main__":
    app.run(main)
