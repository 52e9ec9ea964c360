"""Keras 3 models through the Python API and the command line, and what the API resolves."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from tf_dpu import RunConfig
from tf_dpu.errors import ConfigError
from tf_dpu.keras3 import Twin

sys.path.insert(0, ROOT)
from benchmarks.user_model import user_model  # noqa: E402  pylint: disable=wrong-import-position

keras = pytest.importorskip("keras")
layers = keras.layers


def _varied_model():
    """A Keras 3 graph with every kind of node the twin maps, BatchNorm statistics not 0/1."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.Activation("relu")(y * 0.5 + 1.0)         # operations, not layers
    x = layers.Add()([x, y])
    x = layers.Concatenate()([x, layers.Conv2D(2, 1)(x)])
    x = layers.MaxPooling2D()(layers.ZeroPadding2D(1)(x))
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(5)(layers.Dropout(0.1)(x)), name="varied")
    rng = np.random.default_rng(1)
    bn = [l for l in model.layers if isinstance(l, layers.BatchNormalization)][0]
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6),
                    rng.uniform(0.5, 2, 6)])
    return model


def test_the_twin_computes_what_the_keras3_model_computes():
    model = _varied_model()
    twin = Twin(model)
    x = np.random.default_rng(2).uniform(-2, 2, (16, 8, 8, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.abs(twin.model(x, training=False).numpy() - expected).max() < 1e-4
    assert type(twin.model).__module__.startswith("tf_keras")
    # And back: a Keras 3 copy holding the twin's weights, the original untouched.
    twin_weights = [w + 1 for w in twin.model.get_weights()]
    twin.model.set_weights(twin_weights)
    back = twin.keras3_model(twin.model)
    assert type(back).__module__.split(".")[0] == "keras"
    for name, parts in twin.pairs.items():
        for mine, theirs, original in zip(back.get_layer(name).get_weights(),
                                          [w for part in parts for w in part.get_weights()],
                                          model.get_layer(name).get_weights()):
            assert np.array_equal(mine, theirs) and not np.array_equal(mine, original)


def test_a_twin_that_would_compute_otherwise_is_refused(monkeypatch):
    # A Rescaling that dropped its offset is the kind of slip the check exists for.
    import tf_dpu.keras3 as keras3
    monkeypatch.setitem(keras3._SCALAR_OPS, "Add", lambda c: (1.0, 0.0))
    with pytest.raises(ConfigError, match="computes other outputs"):
        Twin(_varied_model())


def _shared():
    inputs = keras.Input((4,))
    dense = layers.Dense(4)
    return keras.Model(inputs, layers.Dense(2)(dense(dense(inputs))))


def _half():
    inputs = keras.Input((4,))
    return keras.Model(inputs, layers.Dense(2, dtype="float16")(inputs))


def _reverse():
    inputs = keras.Input((4,))
    return keras.Model(inputs, layers.Dense(2)(3.0 - layers.Dense(4)(inputs)))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(2)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("build, message", [
    (lambda: keras.Sequential([keras.Input((4, 3)), layers.LSTM(2)]),
     "layer lstm (LSTM) is not supported"),
    (_shared, "is called 2 times"),
    (_half, "computes in float16"),
    (_reverse, "of a constant by a tensor is not supported"),
    (_Subclassed, "subclassed Keras 3 model"),
])
def test_what_has_no_keras2_twin_is_refused_in_one_line(build, message):
    model = build()
    if isinstance(model, _Subclassed):
        model(np.zeros((1, 4), np.float32))
    with pytest.raises(ConfigError) as caught:
        Twin(model)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _small_config(**kwargs):
    return RunConfig(**{**dict(rounds=2, initial_samples=200, samples_per_round=200, epochs=2,
                               batch_size=64, seed=1, reinit="off"), **kwargs})


def test_the_api_trains_a_keras3_model_and_resolves_from_it(tmp_path, small_mnist):
    from tf_dpu.rounds import run
    model = user_model(seed=5, keras_version=3)
    before = [w.copy() for w in model.get_weights()]
    result = run(_small_config(export_tflite=True, update_ratio=0.02, bn_momentum=0.5,
                               out_dir=str(tmp_path / "run")),
                 progress=None, data=small_mnist, model=model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # a copy
    # BatchNorm found in the given model: frozen, as the command line resolves it.
    assert result.config["bias_policy"] == "frozen"
    assert result.config["model"] == "user_model"
    doc = json.load(open(tmp_path / "run" / "metrics.json"))
    assert doc["config"]["model"] == "user_model"
    assert all(r["sent"] == (r["sent_bytes"] > 0) for r in result.rounds)
    assert result.rounds[1]["changed_biases"] == 0
    # The model comes back in Keras 3 with the deployed weights; --bn_momentum reached it.
    back = result.keras_model()
    assert type(back).__module__.split(".")[0] == "keras"
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), result.deployed))
    assert result.trained.layers[2].momentum == 0.5
    assert os.path.isfile(tmp_path / "run" / "round_001" / "model.keras")


def test_the_api_gives_a_tf_keras_model_back_for_a_tf_keras_one(small_mnist):
    from tf_dpu.rounds import run
    result = run(_small_config(rounds=1), progress=None, data=small_mnist,
                 model=user_model(seed=5))
    back = result.keras_model()
    assert type(back).__module__.startswith("tf_keras")
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), result.deployed))
    assert result.config["bn_momentum"] is None and result.trained.layers[2].momentum == 0.9


@pytest.mark.parametrize("model, kwargs, message", [
    (lambda shape, classes: None, {}, "must take (input_shape, num_classes, seed)"),
    ("keras3", {"bn_epsilon": 1e-3}, "--bn_epsilon is part of what your model computes"),
    (object(), {}, "is a object, not a Keras model"),
])
def test_what_the_api_cannot_use_is_refused_in_one_line(model, kwargs, message, small_mnist):
    from tf_dpu.rounds import run
    if model == "keras3":
        model = user_model(seed=5, keras_version=3)
    with pytest.raises(ConfigError) as caught:
        run(_small_config(**kwargs), progress=None, data=small_mnist, model=model)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_coral_uint8_io_predicts_what_int8_io_does(tmp_path, small_mnist):
    from tf_dpu.rounds import run
    from tflite_edge import runtime
    from tflite_edge.model_file import ModelFile
    files = {}
    for io in ("int8", "uint8"):
        run(_small_config(rounds=1, export_tflite=True, tflite_io=io,
                          out_dir=str(tmp_path / io)), progress=None, data=small_mnist)
        files[io] = (tmp_path / io / "round_000" / "model.tflite").read_bytes()
        view = ModelFile(files[io])
        assert view.tensors[view.inputs[0]].type == {"int8": 9, "uint8": 3}[io]  # TensorType
    raw = small_mnist.preprocessing.to_raw(small_mnist.x_test)
    assert np.array_equal(runtime.predict(files["int8"], raw),
                          runtime.predict(files["uint8"], raw))
    assert np.array_equal(runtime.micro_logits(files["uint8"], raw[:20]).argmax(-1),
                          runtime.predict(files["uint8"], raw[:20]))


def test_the_command_line_runs_uint8_io_and_refuses_it_without_export(tmp_path):
    args = ["--dataset=digits", "--validation_samples=100", "--rounds=2",
            "--initial_samples=200", "--samples_per_round=100", "--epochs=1", "--quiet",
            "--tflite_io=uint8"]
    proc = run_cli(*args, "--export_tflite", f"--out_dir={tmp_path}/a")
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(tmp_path / "a" / "metrics.json"))["config"]["tflite_io"] == "uint8"
    proc = run_cli(*args, f"--out_dir={tmp_path}/b")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "--tflite_io=uint8 sets the int8 file's input and output type; add " \
           "--export_tflite" in proc.stderr


def _edge_layers_model(classes=10):
    """MobileNetV3's building blocks in Keras 3: separable convolution, hard swish,
    squeeze-and-excitation (global pooling, hard sigmoid, Multiply), global max pooling."""
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.Activation("hard_swish")(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.SeparableConv2D(32, 3, padding="same")(x)
    x = layers.Activation("hard_swish")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(4, 1, activation="relu")(gate)
    gate = layers.Conv2D(32, 1, activation="hard_sigmoid")(gate)
    x = layers.Multiply()([x, gate])
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="edge_layers")


def test_edge_layers_train_export_and_patch_alike_in_three_appliers(tmp_path, mnist, c_applier,
                                                                    jar):
    from tf_dpu.rounds import run
    from tflite_edge.apply import apply_patch
    from tflite_edge.check import check
    from conftest import run_jar
    import subprocess
    result = run(RunConfig(rounds=3, initial_samples=600, samples_per_round=300, epochs=5,
                           batch_size=64, seed=1, reinit="off", update_ratio=0.05,
                           optimizer="adam", learning_rate=0.01, export_tflite=True,
                           tflite_io="uint8", out_dir=str(tmp_path / "run")),
                 progress=None, data=mnist, model=_edge_layers_model())
    files = [(tmp_path / "run" / f"round_{r:03d}" / "model.tflite").read_bytes()
             for r in range(3)]
    for target in ("edgetpu", "tflm", "litert"):
        assert check(files[-1], target)[1], target
    assert result.rounds[-1]["tflite_test_accuracy"] > 0.3   # it learns, through the twin
    sent = [r for r in (1, 2) if (tmp_path / "run" / f"round_{r:03d}" / "update.patch").exists()]
    assert sent, result.rounds
    device = {"python": files[0], "c": files[0], "jvm": files[0]}
    for r in range(1, 3):
        patch = tmp_path / "run" / f"round_{r:03d}" / "update.patch"
        if r in sent:
            assert patch.stat().st_size < 0.1 * len(files[0])
            device["python"] = apply_patch(device["python"], patch.read_bytes(),
                                           allow_unsigned=True)
            for name in ("c", "jvm"):
                (tmp_path / name).write_bytes(device[name])
            done = subprocess.run([c_applier, "--allow_unsigned", "--round", str(r - 1),
                                   str(tmp_path / "c"), str(patch), str(tmp_path / "c_out")],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            device["c"] = (tmp_path / "c_out").read_bytes()
            done = run_jar(jar, "apply", f"--base={tmp_path / 'jvm'}", f"--patch={patch}",
                           "--allow_unsigned", "--no_state")
            assert done.returncode == 0, done.stderr
            device["jvm"] = (tmp_path / "jvm").read_bytes()
        assert device["python"] == device["c"] == device["jvm"] == files[r]
