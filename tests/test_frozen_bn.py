"""Kernel steps under a frozen BatchNorm move the deployed (folded) weights no further than lr."""

import numpy as np
import tensorflow as tf

import tf_dpu  # noqa: F401  (Keras 2 before TensorFlow loads)
import tf_keras as keras

from tf_dpu.frozen_bn import step_scales
from tf_dpu.training import Trainer
from tf_dpu.weights import Layout


def _at(model, variable):
    return [w.ref() for w in model.weights].index(variable.ref())


def _model():
    init = "zeros"
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, kernel_initializer=init, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, kernel_initializer=init,
                                     use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=init, name="out")(x))
    # Every weight from one generator: two builds must be identical.
    rng = np.random.RandomState(0)
    weights = [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in model.get_weights()]
    for layer in ("bn1", "bn2"):
        norm = model.get_layer(layer)
        gamma = _at(model, norm.gamma)
        variance = _at(model, norm.moving_variance)
        weights[gamma] = rng.uniform(-3, 3, weights[gamma].shape).astype(np.float32)
        weights[variance] = rng.uniform(0.05, 4, weights[variance].shape).astype(np.float32)
    model.set_weights(weights)
    return model, weights


def test_scales_follow_each_channel_of_the_batch_norm_after_a_kernel():
    model, weights = _model()
    scales = step_scales(model, weights)
    index = {w.name.split("/")[0] + "/" + w.name.split("/")[-1].split(":")[0]: i
             for i, w in enumerate(model.weights)}
    cases = []
    for layer, norm, name in (("conv", "bn1", "kernel"), ("conv", "bn1", "bias"),
                              ("dw", "bn2", "depthwise_kernel")):
        bn = model.get_layer(norm)
        factor = np.abs(weights[_at(model, bn.gamma)]) / np.sqrt(
            weights[_at(model, bn.moving_variance)] + bn.epsilon)
        want = np.minimum(1.0, 1.0 / factor)
        got = np.broadcast_to(scales[index[f"{layer}/{name}"]],
                              weights[index[f"{layer}/{name}"]].shape)
        if name == "depthwise_kernel":
            # Output channel c * multiplier + m of input channel c.
            want = want.reshape(4, 2)
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6)
        cases.append(want)
    assert any((w < 1).any() for w in cases) and any((w == 1).any() for w in cases)
    assert scales[index["out/kernel"]] is None and scales[index["out/bias"]] is None
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert step_scales(plain, plain.get_weights()) is None


def _one_step(scales, bn_training):
    model, weights = _model()
    trainer = Trainer(model, Layout(model), learning_rate=1e-2, batch_size=8)
    trainer.set_step_scales(scales)
    rng = np.random.RandomState(1)
    x = tf.constant(rng.rand(8, 6, 6, 1).astype(np.float32))
    y = tf.constant(rng.randint(0, 3, 8).astype(np.int32))
    trainer.train_epoch(x, y, 1e-2, bn_training=bn_training)
    return [a - b for a, b in zip(model.get_weights(), weights)]


def test_frozen_steps_are_scaled_and_training_steps_are_not():
    model, weights = _model()
    scales = step_scales(model, weights)
    plain = _one_step(None, bn_training=False)
    scaled = _one_step(scales, bn_training=False)
    for i, (a, b) in enumerate(zip(plain, scaled)):
        if scales[i] is None:
            np.testing.assert_allclose(b, a, atol=1e-7)
        else:
            # Adam's first step is the same on both sides; the scale multiplies it.
            np.testing.assert_allclose(b, a * scales[i], rtol=1e-4, atol=1e-8)
    assert any(s is not None and np.abs(a).max() > 0 for a, s in zip(plain, scales))
    unscaled = _one_step(scales, bn_training=True)
    reference = _one_step(None, bn_training=True)
    for a, b in zip(reference, unscaled):
        np.testing.assert_allclose(b, a, atol=1e-7)
