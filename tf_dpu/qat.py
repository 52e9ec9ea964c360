"""Quantization-aware partial updating with the deployed model's frozen int8 parameters.

After round 0 the device's quantization is fixed: per-channel weight scales
and per-tensor activation ranges. `frozen_qat_model` wraps the plain model's
own layers (sharing their variables) in tensorflow-model-optimization's
`QuantizeWrapperV2`, with a `QuantizeConfig` whose quantizers hold exactly
those parameters, so the model the server trains and validates computes what
the device computes: weights rounded to their int8 grid, activations to
theirs (straight-through gradients).

tfmot needs Keras 2 (`tf_keras`), which the package selects on import.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from tf_dpu.errors import ConfigError

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer
_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


def _range(tensor):
    """The float range an int8 tensor with (scale, zero point) represents."""
    scale, zero = float(tensor.scales[0]), int(tensor.zero_points[0])
    return (-128 - zero) * scale, (127 - zero) * scale


class FrozenChannelQuantizer(_Quantizer):
    """Symmetric per-channel int8 on the last axis with fixed scales: w -> s * round(w / s)."""

    def __init__(self, scales: Sequence[float]):
        self.scales = [float(s) for s in scales]

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        limit = tf.constant(127.0 * np.asarray(self.scales, np.float32))
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            inputs, -limit, limit, num_bits=8, narrow_range=True)

    def get_config(self):
        return {"scales": self.scales}


class FrozenRangeQuantizer(_Quantizer):
    """Asymmetric per-tensor int8 with a fixed range (an activation of the device)."""

    def __init__(self, low: float, high: float):
        self.low, self.high = float(low), float(high)

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return tf.quantization.fake_quant_with_min_max_args(inputs, self.low, self.high,
                                                            num_bits=8)

    def get_config(self):
        return {"low": self.low, "high": self.high}


class FrozenQuantizeConfig(_QuantizeConfig):
    """Kernel on the frozen weight grid, output on the frozen activation grid."""

    def __init__(self, kernel_quantizer, output_quantizer):
        self.kernel_quantizer = kernel_quantizer
        self.output_quantizer = output_quantizer

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.kernel_quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        # Bypass Keras' attribute tracking: assigning a tensor through it would
        # drop the kernel variable from the layer's weights and re-append it
        # later, reordering the plain model's weights.
        object.__setattr__(layer, "kernel", quantize_weights[0])

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output_quantizer]

    def get_config(self):
        return {}


class SharedLayerQuantizeWrapper(tfmot.quantization.keras.QuantizeWrapperV2):
    """A QuantizeWrapperV2 that gives the wrapped layer its kernel variable back.

    The plain model keeps using the same layer object; after each call the
    layer's `kernel` attribute is the variable again, not the quantized tensor.
    """

    def call(self, inputs, training=None, **kwargs):
        kernel = self.layer.kernel
        try:
            return super().call(inputs, training=training, **kwargs)
        finally:
            object.__setattr__(self.layer, "kernel", kernel)


class _InputQuantizer(keras.layers.Layer):
    def __init__(self, quantizer, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = quantizer

    def call(self, inputs):
        return self.quantizer(inputs, False, {})


def frozen_qat_model(model: keras.Model, mapping, model_file) -> keras.Model:
    """A model that computes what the deployed int8 file computes, sharing `model`'s variables.

    Args:
      model: the plain Keras model (a chain of layers: mlp, cnn).
      mapping: `tflite_edge.convert.build_map(model, model_file)`.
      model_file: the deployed `tflite_edge.model_file.ModelFile`.

    Returns:
      A Keras model whose trainable variables are `model`'s own.

    Raises:
      ConfigError: a model that is not a chain of layers.
    """
    by_layer = {entry.layer: entry for entry in mapping}
    if any(e.batch_norm is not None or e.input_affine is not None for e in mapping):
        raise ConfigError("--qat supports models whose int8 kernels are their Keras kernels "
                          "(no BatchNorm or input preprocessing folded into them)")
    first = next(by_layer[l.name] for l in model.layers if l.name in by_layer)
    # The device's first weight layer reads its input on this grid (after the
    # raw-input preprocessing, which runs in the file).
    inputs = keras.Input(shape=model.input_shape[1:])
    x = _InputQuantizer(FrozenRangeQuantizer(*_range(first.input_tensor)),
                        name="quantize_input")(inputs)
    previous = model.layers[0]
    for layer in model.layers[1:]:
        # Node 0 is the plain model's own graph; later nodes are QAT graphs
        # built earlier from the same layers.
        nodes = layer._inbound_nodes  # pylint: disable=protected-access
        if not nodes or nodes[0].inbound_layers is not previous:
            raise ConfigError("--qat supports models that are a chain of layers (mlp, cnn)")
        entry = by_layer.get(layer.name)
        if entry is None:
            x = layer(x)
        else:
            config = FrozenQuantizeConfig(FrozenChannelQuantizer(entry.kernel_tensor.scales),
                                          FrozenRangeQuantizer(*_range(entry.output_tensor)))
            x = SharedLayerQuantizeWrapper(layer, config)(x)
        previous = layer
    return keras.Model(inputs, x, name=f"{model.name}_frozen_qat")
