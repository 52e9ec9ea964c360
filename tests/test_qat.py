"""Quantization-aware rounds against the deployed int8 file."""

import numpy as np
import pytest
import tensorflow as tf

from tf_dpu import RunConfig
from tf_dpu.models import build_model
from tf_dpu.qat import frozen_qat_model
from tf_dpu.rounds import run
from tflite_edge import convert, runtime
from tflite_edge.model_file import ModelFile


@pytest.fixture(scope="module")
def deployed(mnist):
    model = build_model("mlp", (28, 28, 1), 10, seed=0)
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist.x_train[:800], mnist.y_train[:800], epochs=2, verbose=0)
    data = convert.convert_int8(model, mnist.x_train[:100])
    data = convert.with_headroom(data, convert.build_map(model, ModelFile(data)),
                                 model.get_weights(), 1.5)
    view = ModelFile(data)
    return model, data, view, convert.build_map(model, view)


def test_qat_model_shares_the_variables_and_keeps_the_weight_order(deployed, mnist):
    model, _, view, mapping = deployed
    names = [w.name for w in model.weights]
    before = model(mnist.x_test[:50], training=False).numpy()
    qat = frozen_qat_model(model, mapping, view)
    qat(mnist.x_test[:50], training=False)
    assert [w.name for w in model.weights] == names
    assert all(any(v is w for w in model.trainable_variables) for v in qat.trainable_variables)
    assert isinstance(model.layers[2].kernel, tf.Variable)   # given back after the call
    assert np.array_equal(model(mnist.x_test[:50], training=False).numpy(), before)


def test_qat_model_computes_what_the_device_computes(deployed, mnist):
    model, data, view, mapping = deployed
    qat = frozen_qat_model(model, mapping, view)
    x = mnist.x_test
    device = runtime.logits(data, x)
    out = view.tensors[view.outputs[0]]
    dequantized = (device.astype(np.float32) - out.zero_points[0]) * out.scales[0]
    server = qat(x, training=False).numpy()
    plain = model(x, training=False).numpy()
    assert np.abs(server - dequantized).mean() < 0.1 * np.abs(plain - dequantized).mean()
    assert np.abs(server - dequantized).max() <= out.scales[0] * 1.01  # one int8 step
    assert np.mean(server.argmax(1) == device.argmax(1)) >= 0.995


def test_qat_rounds_report_the_device_accuracy(small_mnist, tmp_path):
    config = RunConfig(rounds=3, initial_samples=200, samples_per_round=150, epochs=2,
                       batch_size=64, seed=2, export_tflite=True, qat=True,
                       out_dir=str(tmp_path / "run"))
    result = run(config, progress=None, data=small_mnist)
    for r in result.rounds[1:]:
        assert abs(r["test_accuracy"] - r["tflite_test_accuracy"]) <= 1.5 / 300
        assert r["clipped_fraction"] == 0.0
