"""BatchNorm and preprocessing folded by the converter, mapped and verified, never assumed."""

import numpy as np
import pytest
import tf_keras as keras

from tf_dpu.models import build_model
from tflite_edge import convert
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ModelFile

L = keras.layers


def _randomize_batch_norm(model, seed=0):
    """Trained-looking BatchNorm statistics, so that folding changes every value."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.rand(n) + 0.5, rng.randn(n) * 0.1, rng.randn(n) * 0.1,
                               rng.rand(n) + 0.5])
    return model


def _export(model, x, affine=None, io="int8"):
    data = convert.convert_int8(model, x, affine, io)
    return data, convert.build_map(model, ModelFile(data), affine)


@pytest.mark.parametrize("name", ["mobilenet", "ds_cnn", "resnet8", "resnet20"])
def test_every_batchnorm_architecture_maps_and_verifies(name, mnist):
    model = _randomize_batch_norm(build_model(name, (28, 28, 1), 10, seed=0))
    raw = mnist.preprocessing.to_raw(mnist.x_train[:30])
    data, mapping = _export(model, raw, mnist.preprocessing.affine())
    norms = [l.name for l in model.layers if isinstance(l, L.BatchNormalization)]
    assert sorted(e.batch_norm.layer for e in mapping if e.batch_norm) == sorted(norms)
    layouts = {e.layout for e in mapping}
    assert "conv2d" in layouts and "dense" in layouts
    if name in ("mobilenet", "ds_cnn"):
        assert "depthwise" in layouts
    view = ModelFile(data)
    assert view.tensors[view.inputs[0]].shape_signature in (None, (1, 28, 28, 1))


def test_frozen_batchnorm_keeps_a_changed_kernel_element_one_changed_int8(mnist):
    model = _randomize_batch_norm(build_model("mobilenet", (28, 28, 1), 10, seed=0))
    data, mapping = _export(model, mnist.preprocessing.to_raw(mnist.x_train[:30]),
                            mnist.preprocessing.affine())
    old = model.get_weights()
    depthwise = next(e for e in mapping if e.layout == "depthwise" and e.batch_norm)
    new = [w.copy() for w in old]
    new[depthwise.kernel_index][1, 2, 3, 0] *= -1.0   # channel 3
    out, stats = convert.requantize(data, mapping, new, old)
    before = ModelFile(data).array(depthwise.kernel_tensor)
    after = ModelFile(out).array(depthwise.kernel_tensor)
    assert np.argwhere(before != after).tolist() == [[0, 1, 2, 3]]
    changed = np.flatnonzero(np.frombuffer(out, np.uint8) != np.frombuffer(data, np.uint8))
    assert len(changed) == 1 and stats.changed_floats == 1


def test_a_trained_batchnorm_changes_its_whole_channel(mnist):
    model = _randomize_batch_norm(build_model("resnet8", (28, 28, 1), 10, seed=0))
    data, mapping = _export(model, mnist.preprocessing.to_raw(mnist.x_train[:30]),
                            mnist.preprocessing.affine())
    entry = next(e for e in mapping if e.batch_norm)
    old = model.get_weights()
    new = [w.copy() for w in old]
    new[entry.batch_norm.gamma][5] *= 1.5
    out, _ = convert.requantize(data, mapping, new, old)
    before = ModelFile(data).array(entry.kernel_tensor)
    after = ModelFile(out).array(entry.kernel_tensor)
    rows = {tuple(i)[0] for i in np.argwhere(before != after)}
    assert rows == {5}                                   # output channel 5, and only it
    bias_before = ModelFile(data).array(entry.bias_tensor)
    assert np.flatnonzero(ModelFile(out).array(entry.bias_tensor) != bias_before).tolist() == [5]


def test_a_batchnorm_the_converter_cannot_fold_is_refused_by_name(mnist):
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)   # activation before BN
    x = L.BatchNormalization(name="late_norm")(x)
    outputs = L.Dense(10, name="head")(L.Flatten()(x))
    model = _randomize_batch_norm(keras.Model(inputs, outputs))
    data = convert.convert_int8(model, mnist.x_train[:20])
    with pytest.raises(PatchError, match="late_norm"):
        convert.build_map(model, ModelFile(data))


def test_the_input_affine_is_folded_where_the_converter_folds_it(mnist):
    """Into a Dense fed directly (vector input); never into a convolution (padding)."""
    a, b = np.float32(1 / (255 * 0.3081)), np.float32(-0.1307 / 0.3081)
    vector = keras.Model(*(lambda i: (i, L.Dense(10, name="head")(L.Dense(
        16, activation="relu", name="first")(i))))(keras.Input((40,))))
    raw = np.random.RandomState(0).rand(30, 40).astype(np.float32) * 255
    _, mapping = _export(vector, raw, (a, b))
    assert mapping[0].input_affine is not None and mapping[1].input_affine is None
    image = build_model("cnn", (28, 28, 1), 10, seed=0)
    _, mapping = _export(image, mnist.preprocessing.to_raw(mnist.x_train[:30]), (a, b))
    assert all(e.input_affine is None for e in mapping)


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_device_ready_files_take_raw_samples_one_at_a_time(io, mnist):
    model = build_model("cnn", (28, 28, 1), 10, seed=0)
    raw = mnist.preprocessing.to_raw(mnist.x_train[:30])
    data, _ = _export(model, raw, mnist.preprocessing.affine(), io)
    view = ModelFile(data)
    for index in (*view.inputs, *view.outputs):
        tensor = view.tensors[index]
        assert tensor.type == {"int8": 9, "uint8": 3}[io]
        assert tensor.shape[0] == 1 and (tensor.shape_signature is None
                                         or -1 not in tensor.shape_signature)
    # Raw 8-bit pixels map onto the input grid exactly: scale 1, the zero point
    # of the type (0 for uint8, -128 for int8), so a device feeds its bytes.
    entry = view.tensors[view.inputs[0]]
    assert entry.scales[0] == pytest.approx(1.0) and entry.zero_points[0] == (
        0 if io == "uint8" else -128)


def test_a_buffer_the_converter_shares_between_two_layers_is_never_written_for_one():
    """Identical constants become one tensor; a write for one layer would change both."""
    inputs = keras.Input((8,))
    first = L.Dense(8, activation="relu", name="first")
    second = L.Dense(8, activation="relu", name="second")
    outputs = L.Dense(3, name="head")(second(first(inputs)))
    model = keras.Model(inputs, outputs)
    rng = np.random.RandomState(0)
    kernel, bias = rng.randn(8, 8).astype(np.float32) * 0.3, rng.randn(8).astype(np.float32)
    first.set_weights([kernel, bias])
    second.set_weights([kernel, bias])
    data, mapping = _export(model, rng.rand(40, 8).astype(np.float32))
    entry = next(e for e in mapping if e.layer == "first")
    assert entry.shared_kernel and "second" in entry.shared_kernel[0]
    old = model.get_weights()
    new = [w.copy() for w in old]
    new[0][2, 3] += 0.1        # one element of `first` only
    with pytest.raises(PatchError, match="first.*one buffer with"):
        convert.requantize(data, mapping, new, old)
