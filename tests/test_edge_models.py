"""The models people deploy and a user's own Keras model, end to end to device-ready files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from tflite_edge import runtime
from tflite_edge.apply import apply_patch
from tflite_edge.check import check
from tflite_edge.model_file import ModelFile

sys.path.insert(0, ROOT)
from benchmarks.user_model import user_model  # noqa: E402  pylint: disable=wrong-import-position

TINY = ["--dataset=mnist", "--rounds=3", "--initial_samples=300", "--samples_per_round=300",
        "--epochs=2", "--batch_size=64", "--reinit=off", "--seed=1", "--quiet"]  # the fixture split


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "user_model.keras"
    user_model(seed=3).save(path)
    return str(path)


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory):
    """The same model saved by Keras 3 (what `tf.keras` is from TensorFlow 2.16 on)."""
    path = tmp_path_factory.mktemp("keras3") / "user_model.keras"
    user_model(seed=3, keras_version=3).save(path)
    return str(path)


def _files(out):
    return [open(os.path.join(out, f"round_{r:03d}", "model.tflite"), "rb").read()
            for r in range(3)]


@pytest.mark.parametrize("name", ["mobilenet", "ds_cnn", "resnet8", "user", "keras3"])
def test_exported_batchnorm_models_are_device_ready(name, user_file, keras3_file, tmp_path,
                                                    mnist, c_applier):
    model = {"user": user_file, "keras3": keras3_file}.get(name, name)
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"--model={model}", "--export_tflite", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    doc = json.load(open(out / "metrics.json"))
    assert doc["config"]["bias_policy"] == "frozen"   # auto, for an exported BatchNorm model
    files = _files(out)
    last = files[-1]
    view = ModelFile(last)
    entry = view.tensors[view.inputs[0]]
    assert entry.shape == (1, 28, 28, 1) and (entry.shape_signature is None
                                              or -1 not in entry.shape_signature)
    for target in ("edgetpu", "tflm", "litert"):
        assert check(last, target)[1], target
    # The device is fed raw pixels; LiteRT on the last file scores what the server recorded.
    raw = mnist.preprocessing.to_raw(mnist.x_test)
    assert np.mean(runtime.predict(last, raw) == mnist.y_test) == pytest.approx(
        doc["rounds"][-1]["tflite_test_accuracy"])
    # TFLite Micro computes what LiteRT's reference kernels compute, to one int8 step.
    micro = runtime.micro_logits(last, raw[:100]).astype(int)
    assert np.abs(runtime.logits(last, raw[:100], reference_kernels=True) - micro).max() <= 1
    # Every patch the run sent rebuilds the next file, in Python and in C.
    assert any(r["patch_bytes"] > 0 for r in doc["rounds"][1:]), doc["rounds"]
    device = files[0]
    for r in (1, 2):
        patch = out / f"round_{r:03d}" / "update.patch"
        if patch.exists():
            device = apply_patch(device, patch.read_bytes(), allow_unsigned=True)
            (tmp_path / "base").write_bytes(files[r - 1])
            done = subprocess.run([c_applier, "--allow_unsigned", "--round", str(r - 1),
                                   str(tmp_path / "base"), str(patch),
                                   str(tmp_path / "c_out")], capture_output=True, text=True)
            assert done.returncode == 0 and (tmp_path / "c_out").read_bytes() == files[r]
            assert doc["rounds"][r]["patch_bytes"] < 0.05 * len(files[0])
        assert device == files[r]
    if name == "keras3":
        _keras3_rounds_match_the_device(out, last, raw, mnist)


def _keras3_rounds_match_the_device(out, last, raw, mnist):
    """Each round's model.keras is Keras 3 and computes what the round's .tflite does."""
    import keras
    model = keras.saving.load_model(out / "round_002" / "model.keras")
    assert type(model).__module__.split(".")[0] == "keras"
    for r in range(3):
        assert (out / f"round_{r:03d}" / "model.keras").is_file()
    x = mnist.x_test[:300]
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    view = ModelFile(last)
    detail = view.tensors[view.outputs[0]]
    steps = np.round(expected / detail.scales[0]) + detail.zero_points[0]
    device = runtime.logits(last, raw[:300]).astype(int)
    # The int8 file rounds every layer, so logits move by a few output steps:
    # the class may flip only where the float model's top two are that close.
    top = np.sort(steps, -1)
    clear = top[:, -1] - top[:, -2] > 4
    agree = np.argmax(expected, -1) == np.argmax(device, -1)
    assert clear.mean() > 0.5 and agree[clear].mean() >= 0.99, (clear.mean(), agree[clear].mean())
    assert np.abs(np.median(device - steps)) <= 2
    assert np.median(np.abs(steps - device)) <= 1, np.abs(steps - device).max()


def test_the_python_api_takes_a_model_or_a_builder(tmp_path, small_mnist):
    from tf_dpu import RunConfig
    from tf_dpu.rounds import run
    config = RunConfig(rounds=2, initial_samples=200, samples_per_round=200, epochs=1,
                       batch_size=64, seed=1)
    model = user_model(seed=5)
    before = [w.copy() for w in model.get_weights()]
    given = run(config, progress=None, data=small_mnist, model=model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # a copy
    assert all(np.array_equal(a, b) for a, b in zip(before, given.w0))
    built = run(RunConfig(**{**config.__dict__, "method": "fu", "fu_init": "diff_init"}),
                progress=None, data=small_mnist,
                model=lambda shape, classes, seed: user_model(shape, classes, seed))
    assert len(built.rounds) == 2


@pytest.mark.parametrize("build, message", [
    ("lstm", "layer lstm (LSTM) is not supported"),
    ("softmax", "outputs probabilities"),
    ("classes", "outputs shape (7,), but the data set has 10 classes"),
    ("input", "takes inputs of shape (32, 32, 3), but the data set's samples are (28, 28, 1)"),
    ("no_kernel", "has no trainable kernel"),
])
def test_a_users_model_is_refused_in_one_line_naming_the_problem(build, message, tmp_path):
    import tf_keras as keras
    layers = keras.layers
    if build == "lstm":
        inputs = keras.Input((28, 28, 1))
        x = layers.LSTM(4, name="lstm")(layers.Reshape((28, 28))(inputs))
        model = keras.Model(inputs, layers.Dense(10)(x))
    elif build == "softmax":
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(),
                                  layers.Dense(10, activation="softmax")])
    elif build == "classes":
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(7)])
    elif build == "input":
        model = user_model((32, 32, 3))
    else:
        inputs = keras.Input((28, 28, 1))
        model = keras.Model(inputs, layers.Reshape((10,))(layers.GlobalAveragePooling2D()(
            layers.Conv2D(10, 1, trainable=False)(inputs))))
    path = tmp_path / "model.keras"
    model.save(path)
    proc = run_cli("--dataset=mnist", f"--model={path}", f"--out_dir={tmp_path}/run")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("args, message", [
    (["--dataset=mnist1d", "--model=mobilenet"], "--model=mobilenet needs image inputs"),
    (["--model=/no/such.keras"], "--model=/no/such.keras: no such file"),
    (["--model=resnet8", "--export_tflite", "--bias_policy=masked"],
     "--bias_policy=masked would let BatchNorm parameters compete"),
    (["--model=ds_cnn", "--export_tflite", "--qat"], "--qat does not support models with "
     "BatchNorm"),
    (["--model=mobilenet", "--width_multiplier=0"], "--width_multiplier must be in (0, 4]"),
])
def test_edge_model_settings_are_refused_in_one_line(args, message, tmp_path):
    proc = run_cli(*args, f"--out_dir={tmp_path}/run", "--dry_run")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_the_target_check_command(tmp_path, exported_run):
    result, _ = exported_run
    path = os.path.join(result.out_dir, "round_000", "model.tflite")
    done = subprocess.run([sys.executable, "-m", "tflite_edge.check", "--target=edgetpu", path],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FULLY_CONNECTED" in done.stdout and "meets the edgetpu constraints" in done.stdout
    # A file with a dynamic batch (what the export wrote before) fails the Edge TPU's check.
    import tf_keras as keras
    import tensorflow as tf
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp_path / "dynamic.tflite").write_bytes(converter.convert())
    done = subprocess.run([sys.executable, "-m", "tflite_edge.check", "--target=edgetpu",
                           str(tmp_path / "dynamic.tflite")], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 1 and "dynamic shape" in done.stdout and "not int8" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "tflite_edge.check", "--target=gpu", path],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_check_reports_the_tflm_arena_a_firmware_must_reserve(tmp_path):
    """The arena `check --target=tflm` reports is the smallest TFLite Micro runs the
    model in: it runs there, and 16 bytes less does not allocate."""
    import re  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    from conftest import require_module  # pylint: disable=import-outside-toplevel
    from hostile import TINY_MODEL  # pylint: disable=import-outside-toplevel
    from tflite_edge.check import _runs_in  # pylint: disable=import-outside-toplevel
    micro = require_module("tflite_micro.python.tflite_micro.runtime", "tflite-micro")
    proc = subprocess.run([sys.executable, "-m", "tflite_edge.check", "--target=tflm",
                           TINY_MODEL], capture_output=True, text=True)
    found = re.search(r"RAM: tensor arena [\d.]+ KiB = (\d+) bytes, of which the model's "
                      r"tensors use (\d+); flash: model [\d.]+ KiB = (\d+) bytes", proc.stdout)
    assert found, proc.stdout + proc.stderr
    arena, used, flash = (int(n) for n in found.groups())
    data = open(TINY_MODEL, "rb").read()
    assert flash == len(data) and used < arena
    assert _runs_in(micro, data, arena) is not None
    assert _runs_in(micro, data, arena - 16) is None
