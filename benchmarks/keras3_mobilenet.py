"""A Keras 3 `keras.applications.MobileNetV2`, end to end, as a Coral or MCU user runs it.

    python -m benchmarks.keras3_mobilenet --out=benchmarks/results/keras3_mobilenet.json

MobileNetV2 (alpha 0.35, `weights=None`, `classifier_activation=None`) for
32x32x1 inputs is built and saved as `.keras` by Keras 3, then trained with
DPU through the command line on the bundled digits (8x8 upsampled to 32x32,
as uint8 pixels in an npz with its own validation split), exported with
Coral's uint8 input and output. Reported: the Edge TPU and TFLite Micro
checks, bytes per round and their share of the file, int8 against float
accuracy, whether the Python, C and JVM appliers rebuild every round byte for
byte, and how far the last round's `model.keras`, reloaded in Keras 3, is from
the `.tflite` (argmax agreement, output steps).
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 4   # round 0 (whole file) and three DPU rounds


def digits_npz(path: str) -> None:
    """The bundled digits as 32x32 uint8 images, with train, validation and test splits."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((1, 4, 4), np.uint8))[..., None]
    order = np.random.RandomState(0).permutation(len(pixels))
    train, val, test = order[:1197], order[1197:1397], order[1397:]
    np.savez(path, x_train=pixels[train], y_train=digits.target[train],
             x_val=pixels[val], y_val=digits.target[val],
             x_test=pixels[test], y_test=digits.target[test])


def measure(work: str, epochs: int = 8, update_ratio: float = 0.05,
            learning_rate: float = 0.002) -> dict:
    """Runs the whole path in `work`; returns the figures."""
    import keras  # pylint: disable=import-outside-toplevel
    from benchmarks import jvm  # pylint: disable=import-outside-toplevel
    from benchmarks.chain import reproduce_chain  # pylint: disable=import-outside-toplevel
    from tf_dpu.data import load_dataset  # pylint: disable=import-outside-toplevel
    from tflite_edge import runtime  # pylint: disable=import-outside-toplevel
    from tflite_edge.check import check  # pylint: disable=import-outside-toplevel
    from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
    data_path, model_path = os.path.join(work, "digits32.npz"), os.path.join(work, "mnv2.keras")
    digits_npz(data_path)
    keras.utils.set_random_seed(1)   # keras.applications draws its initialization unseeded
    keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None,
                                   classes=10, classifier_activation=None).save(model_path)
    out = os.path.join(work, "run")
    done = subprocess.run(
        [sys.executable, "-m", "tf_dpu.train", f"--dataset=npz:{data_path}",
         f"--model={model_path}", "--method=dpu", f"--update_ratio={update_ratio}",
         f"--rounds={ROUNDS}", "--initial_samples=597", "--samples_per_round=200",
         f"--epochs={epochs}", "--optimizer=adam", f"--learning_rate={learning_rate}",
         "--bn_momentum=0.9", "--export_tflite", "--tflite_io=uint8", "--quiet",
         f"--out_dir={out}"], capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    rounds = json.load(open(os.path.join(out, "metrics.json")))["rounds"]
    files = []
    for r in range(ROUNDS):
        with open(os.path.join(out, f"round_{r:03d}", "model.tflite"), "rb") as f:
            files.append(f.read())
    c_applier = os.path.join(work, "dpu_apply")
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "tflite_edge", "c"),
                    f"OUT={work}", c_applier], check=True)
    jar = jvm.build()
    chain = reproduce_chain(out, ROUNDS, c_applier, jar)
    data = load_dataset(f"npz:{data_path}", 200, 1)
    last = keras.saving.load_model(os.path.join(out, f"round_{ROUNDS - 1:03d}", "model.keras"))
    expected = keras.ops.convert_to_numpy(last(data.x_test, training=False))
    view = ModelFile(files[-1])
    detail = view.tensors[view.outputs[0]]
    steps = np.round(expected / detail.scales[0]) + detail.zero_points[0]
    device = runtime.logits(files[-1], data.preprocessing.to_raw(data.x_test)).astype(int)
    return {
        "checks": {t: bool(check(files[-1], t)[1]) for t in ("edgetpu", "tflm", "litert")},
        "model_bytes": len(files[0]),
        "rounds": [{"round": r["round"], "sent_bytes": r["sent_bytes"],
                    "share_of_file": round(r["sent_bytes"] / len(files[0]), 4),
                    "float_test": r["test_accuracy"], "int8_test": r["tflite_test_accuracy"],
                    "full_test": r.get("full_test_accuracy")} for r in rounds],
        "appliers_agree": all(chain.values()), "jvm_ran": bool(jar),
        # The reloaded Keras 3 model scores what the server recorded for the round.
        "keras3_test": float(np.mean(expected.argmax(-1) == data.y_test)),
        "keras3_vs_tflite": {
            "argmax_agreement": float(np.mean(expected.argmax(-1) == device.argmax(-1))),
            "max_steps": int(np.abs(steps - device).max()),
            "median_steps": float(np.median(np.abs(steps - device))),
            "within_one_step": float(np.mean(np.abs(steps - device) <= 1))},
    }


def main(argv=None) -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    del argv
    with tempfile.TemporaryDirectory() as work:
        results = measure(work, flags.FLAGS.epochs, learning_rate=flags.FLAGS.learning_rate)
    text = json.dumps(results, indent=2)
    print(text)
    if flags.FLAGS.out:
        from tflite_edge.files import write_atomic  # pylint: disable=import-outside-toplevel
        write_atomic(flags.FLAGS.out, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
    import tf_dpu  # noqa: F401  pylint: disable=unused-import  (Keras 2 for the training side)
    absl_flags.DEFINE_integer("epochs", 8, "epochs per step")
    absl_flags.DEFINE_float("learning_rate", 0.002, "Adam's learning rate (MobileNet's step 1 "
                            "loses its accuracy at 5e-3)")
    absl_flags.DEFINE_string("out", None, "write the results as JSON here")
    app.run(main)
