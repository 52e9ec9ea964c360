"""Keras-to-TFLite mapping, frozen re-quantization, headroom and patch costs."""

import numpy as np
import pytest
import tensorflow as tf

from tf_dpu import RunConfig, selection
from tf_dpu.models import build_model
from tf_dpu.rounds import run
from tflite_edge import convert, patch_format
from tflite_edge.create import create_patch
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ModelFile


def _trained(name, shape, data, epochs=1):
    model = build_model(name, shape, 10, seed=0)
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = data.x_train[:600].reshape(-1, *shape)
    model.fit(x, data.y_train[:600], epochs=epochs, verbose=0)
    return model, x


@pytest.fixture(scope="module")
def mlp(mnist):
    model, x = _trained("mlp", (28, 28, 1), mnist)
    data = convert.convert_int8(model, x[:50])
    return model, data, convert.build_map(model, ModelFile(data))


@pytest.mark.parametrize("name, shape, layouts", [
    ("cnn", (28, 28, 1), ["conv2d", "conv2d", "dense", "dense"]),
    ("cnn", (784,), ["conv1d", "conv1d", "dense", "dense"]),
])
def test_mapping_is_built_and_verified_for_conv_nets(mnist, name, shape, layouts):
    model, x = _trained(name, shape, mnist)
    mapping = convert.build_map(model, ModelFile(convert.convert_int8(model, x[:50])))
    assert [e.layout for e in mapping] == layouts
    assert all(e.bias_tensor is not None for e in mapping)


def test_depthwise_layout_is_mapped_and_patched(mnist):
    keras = tf.keras
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist.x_train[:300], mnist.y_train[:300], epochs=1, verbose=0)
    data = convert.convert_int8(model, mnist.x_train[:50])
    mapping = convert.build_map(model, ModelFile(data))
    assert [e.layout for e in mapping] == ["conv2d", "depthwise", "dense"]
    assert mapping[1].kernel_tensor.shape == (1, 3, 3, 8)
    old = model.get_weights()
    new = [w.copy() for w in old]
    new[mapping[1].kernel_index][1, 2, 3, 1] *= 0.5      # channel 3 * 2 + 1 = 7
    out, stats = convert.requantize(data, mapping, new, old)
    assert stats.changed_floats == 1
    before, after = ModelFile(data).array(mapping[1].kernel_tensor), ModelFile(out).array(
        mapping[1].kernel_tensor)
    assert np.argwhere(before != after).tolist() == [[0, 1, 2, 7]]


def test_mapping_of_the_mlp(mlp):
    _, data, mapping = mlp
    assert [e.kernel_tensor.shape for e in mapping] == [(300, 784), (100, 300), (10, 100)]
    assert all(len(e.kernel_tensor.scales) == e.kernel_tensor.shape[0] for e in mapping)


def test_a_mapping_that_does_not_verify_is_refused(mlp, mnist):
    _, data, _ = mlp
    other, _ = _trained("mlp", (28, 28, 1), mnist, epochs=2)
    with pytest.raises(PatchError, match="no operator.s stored values are reproduced"):
        convert.build_map(other, ModelFile(data))


def test_requantize_writes_exactly_the_changed_elements(mlp):
    model, data, mapping = mlp
    old = model.get_weights()
    new = [w.copy() for w in old]
    new[0][5, 7] *= 0.5                # stays inside its channel's range
    new[0][100, 3] = 1e3               # far outside the frozen range: clipped
    new[2][0, :] *= 0.5                # a whole row of the second kernel
    out, stats = convert.requantize(data, mapping, new, old)
    assert len(out) == len(data)
    diff = np.flatnonzero(np.frombuffer(out, np.uint8) != np.frombuffer(data, np.uint8))
    assert 0 < len(diff) <= 2 + 100
    assert stats.changed_floats == 102 and stats.clipped == 1
    view = ModelFile(out)
    assert view.array(mapping[0].kernel_tensor)[3, 100] == 127  # stored transposed


def test_headroom_widens_scales_and_keeps_the_model(mlp, mnist):
    model, data, mapping = mlp
    wide = convert.with_headroom(data, mapping, model.get_weights(), 2.0)
    remapped = convert.build_map(model, ModelFile(wide))
    for a, b in zip(mapping, remapped):
        np.testing.assert_allclose(b.kernel_tensor.scales, 2 * a.kernel_tensor.scales, rtol=1e-6)
    x, y = mnist.x_test[:300], mnist.y_test[:300]
    assert abs(convert.int8_accuracy(wide, x, y) - convert.int8_accuracy(data, x, y)) <= 0.02
    bounds = convert.kernel_bounds(remapped, len(model.weights))
    assert bounds[0].shape == (784, 300)
    assert np.allclose(bounds[0][0], 127 * remapped[0].kernel_tensor.scales)


def test_dead_channels_get_a_usable_scale(mnist):
    """An all-zero channel (pruning, a frozen layer) must be able to come back."""
    model = build_model("mlp", (28, 28, 1), 10, seed=0, initializer="torch")
    weights = model.get_weights()
    weights[0][:, :4] = 0.0
    weights[1][:4] = [0.3, -0.2, 0.0, 1e-3]   # the converter fits these into int32 extremes
    model.set_weights(weights)
    data = convert.convert_int8(model, mnist.x_train[:50])
    mapping = convert.build_map(model, ModelFile(data))       # verifies despite float32 bias math
    assert mapping[0].kernel_tensor.scales[:4].max() < 1e-6
    wide = convert.with_headroom(data, mapping, weights, 1.5)
    remapped = convert.build_map(model, ModelFile(wide))
    live = mapping[0].kernel_tensor.scales[4:]
    assert np.allclose(remapped[0].kernel_tensor.scales[:4], 1.5 * np.median(live), rtol=1e-5)
    revived = [w.copy() for w in weights]
    revived[0][:, 0] = 0.5 * weights[0][:, 5]
    _, stats = convert.requantize(wide, remapped, revived, weights)
    assert stats.changed_floats > 0 and stats.clipped == 0


def test_patch_cost_is_the_real_patch_size(mlp):
    model, data, mapping = mlp
    old = model.get_weights()
    rng = np.random.RandomState(0)
    masks = [rng.rand(*w.shape) < 0.01 if w.ndim == 2 else None for w in old]
    new = [w.copy() for w in old]
    for w, m in zip(new, masks):
        if m is not None:   # move each selected element by more than one int8 step
            w[m] += np.where(w[m] > 0, -1, 1) * 0.2 * np.abs(w).max()
    out, _ = convert.requantize(data, mapping, new, old)
    cost = convert.PatchCost(mapping, "none", signed=False)
    patch = create_patch(data, out, 1, version=3)
    # The estimate counts raw values; the writer may code them as deltas, and
    # the difference is exactly what that saved.
    saved = sum(len(r.positions) * 1 - r.value_bytes
                for r in patch_format.decode(patch, data).records)
    assert saved >= 0
    assert cost(masks) == len(patch) + saved
    # Version 4 (the default) never costs more: the estimate bounds it too.
    assert len(create_patch(data, out, 1)) < len(patch)


def test_byte_budget_selection_takes_the_longest_prefix_that_fits(mlp):
    model, _, mapping = mlp
    cost = convert.PatchCost(mapping, "all", signed=True)
    scores = {i: np.random.RandomState(i).rand(*w.shape)
              for i, w in enumerate(model.get_weights()) if w.ndim == 2}
    masks = selection.within_bytes(scores, cost, 4000, len(model.weights))
    n = selection.count(masks)
    assert cost(masks) <= 4000 < cost(selection.top_k(scores, n + 1, len(model.weights)))


def test_rounds_respect_a_byte_budget(small_mnist, tmp_path):
    config = RunConfig(rounds=3, initial_samples=200, samples_per_round=150, epochs=2,
                       batch_size=64, seed=2, export_tflite=True, budget_bytes=2500,
                       out_dir=str(tmp_path / "run"))
    result = run(config, progress=None, data=small_mnist)
    later = [r for r in result.rounds[1:] if r["sent"]]
    assert later
    for r in later:
        assert 0 < r["patch_bytes"] <= 2500
        assert r["selected_elements"] > 100


def test_nan_weights_are_refused_not_deployed(mlp):
    model, data, mapping = mlp
    old = model.get_weights()
    new = [w.copy() for w in old]
    new[0][3, 4] = np.nan
    with pytest.raises(PatchError, match="NaN or infinity"):
        convert.requantize(data, mapping, new, old)


def test_a_diverging_step_stops_and_is_not_deployed(small_mnist, tmp_path):
    lines = []
    result = run(RunConfig(rounds=2, initial_samples=200, samples_per_round=100, epochs=2,
                           learning_rate=1e12, seed=1, out_dir=str(tmp_path / "run")),
                 progress=lines.append, data=small_mnist)
    assert any("stopping this step" in line for line in lines), lines
    for r in result.rounds:
        assert np.isfinite(r["test_accuracy"])
    assert all(np.isfinite(w).all() for w in result.deployed)
