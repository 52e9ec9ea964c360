"""The server's export: round-0 int8 conversion, then frozen re-quantization in place.

Re-converting after every round recomputes the quantization scales and the
activation ranges, so almost every int8 value of the file moves and a 1 %
float update becomes a dense patch. Instead, round 0 is converted once; every
later round writes only the changed elements into the previous file,
quantized with the scales that file already carries (clipped to [-127, 127]),
never re-serializing the flatbuffer.

This module imports TensorFlow; devices never need it.
"""

import dataclasses
import warnings
from typing import List, Optional, Sequence

import numpy as np

from tflite_edge import native_output
from tflite_edge.errors import PatchError
from tflite_edge.folding import (LayerMap, _broadcast, build_map, folded, quantize_bias,
                                 quantize_kernel, to_tflite_layout)
from tflite_edge.model_file import ModelFile


def convert_int8(model, representative: np.ndarray, input_affine=None,
                 io_type: str = "int8") -> bytes:
    """Converts a Keras model to a full-integer `.tflite` for a device.

    The file takes one sample at a time (a static batch of 1: no -1 in its
    shape signature, as the Edge TPU compiler and microcontrollers need) and,
    with `input_affine`, the data set's raw samples: the preprocessing
    `x * a + b` (pixels to standardised values) runs inside the file, so a
    device feeds what its sensor gives.

    Args:
      model: a `tf_keras` model.
      representative: samples that calibrate the activation ranges (about
        100), raw when `input_affine` is given.
      input_affine: (a, b), scalars or per-channel arrays, or None.
      io_type: `int8` or `uint8`: the type of the file's input and output.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    shape = tuple(model.input_shape[1:])
    inputs = keras.Input(shape, name="input")
    x = inputs
    if input_affine is not None:
        a, b = (np.asarray(v, np.float32) for v in input_affine)
        x = keras.layers.Rescaling(scale=a, offset=b, name="preprocessing")(x)
    export = keras.Model(inputs, model(x, training=False), name="export")
    function = tf.function(lambda t: export(t, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, *shape), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], export)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = np.asarray(representative, np.float32)
    converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
    converter.inference_input_type = dtype
    converter.inference_output_type = dtype
    import logging as python_logging  # pylint: disable=import-outside-toplevel
    from absl import logging  # pylint: disable=import-outside-toplevel
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # the converter logs every SavedModel step
    tf_logger = python_logging.getLogger("tensorflow")
    tf_level = tf_logger.level
    tf_logger.setLevel(python_logging.WARNING)   # "Assets written to: /tmp/..."
    try:
        with warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": the input range
            # comes from the representative data, which is what we want.
            warnings.simplefilter("ignore", UserWarning)
            with native_output.muted():
                return converter.convert()
    finally:
        logging.set_verbosity(verbosity)
        tf_logger.setLevel(tf_level)


def with_headroom(data: bytes, mapping: Sequence[LayerMap], weights: Sequence[np.ndarray],
                  headroom: float) -> bytes:
    """Widens every weight scale by `headroom`, revives dead channels, re-quantizes in place.

    Scales are frozen after round 0, and the elements a partial update moves
    are exactly the ones that move most; without room above round 0's largest
    magnitude they would clip. A headroom of h costs log2(h) bits of weight
    resolution. A channel whose weights are all zero gets a scale near 0 from
    the converter (chosen so that its bias fills int32), which would freeze it
    at zero forever; it gets its layer's median live scale instead. Bias
    scales follow (input scale x weight scale). The scale vectors are
    overwritten with the same number of bytes, so the file keeps its layout.
    """
    out = bytearray(data)
    view = ModelFile(data)
    for entry in mapping:
        tensor = entry.kernel_tensor
        kernel, bias = folded(entry, weights)
        scales = tensor.scales.astype(np.float64) * headroom
        if len(scales) > 1:
            axes = tuple(a for a in range(kernel.ndim) if a != tensor.quantized_dimension)
            dead = ~np.any(kernel != 0, axis=axes)
            if dead.any():
                scales[dead] = np.median(scales[~dead]) if (~dead).any() else headroom / 127.0
        pairs = [(tensor, scales, kernel, quantize_kernel)]
        if entry.bias_tensor is not None:
            # The converter's bias scale is input scale x weight scale, per channel.
            input_scale = float(entry.bias_tensor.scales[0]) / float(tensor.scales[0])
            pairs.append((entry.bias_tensor, scales * input_scale,
                          bias if bias is not None else np.zeros(entry.bias_tensor.shape,
                                                                 np.float32), quantize_bias))
        for target, new_scales, values, quantize in pairs:
            if not target.scale_offset:
                raise PatchError(f"tensor {target.name!r} has no scale vector to widen")
            widened = dataclasses.replace(target, scales=new_scales.astype(np.float32))
            raw = widened.scales.astype("<f4").tobytes()
            out[target.scale_offset:target.scale_offset + len(raw)] = raw
            quantized = quantize(values, widened)
            offset = view.buffers[target.buffer].offset
            out[offset:offset + quantized.nbytes] = quantized.astype(
                quantized.dtype.newbyteorder("<")).tobytes()
    return bytes(out)


def kernel_bounds(mapping: Sequence[LayerMap], length: int) -> List[Optional[np.ndarray]]:
    """The largest magnitude each kernel element can take without clipping.

    127 x its channel's frozen scale, in the Keras layout, per `model.weights`
    index (None for weights without a bound). Training inside these bounds
    keeps the float model representable on the device.
    """
    bounds: List[Optional[np.ndarray]] = [None] * length
    for entry in mapping:
        limit = 127.0 * entry.kernel_tensor.scales.astype(np.float64)
        shape = entry.kernel_shape
        if entry.layout == "depthwise":
            limit = limit.reshape(shape[2], shape[3])
        limit = np.broadcast_to(limit, shape)
        if entry.factor is not None:
            # The file stores the kernel times its fold (BatchNorm, input scale).
            limit = limit / np.maximum(np.abs(entry.factor), 1e-30)
        bounds[entry.kernel_index] = limit.astype(np.float32)
    return bounds


def tflite_order(layout: str, shape: tuple) -> np.ndarray:
    """For each element of the TFLite buffer, the flat index of its Keras element."""
    keras_index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return np.ascontiguousarray(to_tflite_layout(layout, keras_index)).ravel()


class PatchCost:
    """The exact size of the version-3 patch that a selection would produce.

    Positions are coded in each buffer's TFLite layout (a Dense kernel is
    stored transposed, so its gaps differ from the Keras order), with the
    cheaper of Rice and bitmap per record, as the patch writer does. A
    selection's cost bounds the real patch: elements whose int8 value ends up
    unchanged only make it smaller, and a version-4 patch of the same
    changes is never larger (its record headers are shorter, and it takes an
    adaptive code only where that is smaller than the version-3 one).

    Args:
      mapping: from `build_map`.
      bias_changes: `all` (every bias may change), `selected` (biases are in
        the masks) or `none`.
      signed: whether patches carry a signature.
    """

    def __init__(self, mapping: Sequence[LayerMap], bias_changes: str, signed: bool):
        from tflite_edge import patch_format  # pylint: disable=import-outside-toplevel
        self._format = patch_format
        self.mapping = mapping
        self.bias_changes = bias_changes
        self.fixed = (patch_format.HEADER.size + patch_format.CHECKSUM_SIZE
                      + (patch_format.SIGNATURE_SIZE if signed else 0))
        self._inverse = {e.kernel_index: np.argsort(tflite_order(e.layout, e.kernel_shape))
                         for e in mapping}

    def _record(self, positions_sorted: np.ndarray, count: int, value_size: int) -> int:
        from tflite_edge import positions as codes  # pylint: disable=import-outside-toplevel
        if not len(positions_sorted):
            return 0
        _, _, position_bytes = codes.choose(positions_sorted, count)
        return (self._format.ELEMENTS_RECORD.size + position_bytes
                + len(positions_sorted) * value_size)

    def __call__(self, masks) -> int:
        """Bytes of the patch if exactly the True elements of `masks` changed."""
        total = self.fixed
        for entry in self.mapping:
            mask = masks[entry.kernel_index]
            if mask is not None and mask.any():
                keras_flat = np.flatnonzero(mask)
                total += self._record(np.sort(self._inverse[entry.kernel_index][keras_flat]),
                                      mask.size, 1)
            if entry.bias_index is None or entry.bias_tensor is None:
                continue
            count = int(np.prod(entry.bias_tensor.shape))
            if self.bias_changes == "all":
                total += self._record(np.arange(count), count, 4)
            elif self.bias_changes == "selected" and masks[entry.bias_index] is not None:
                total += self._record(np.flatnonzero(masks[entry.bias_index]), count, 4)
        return total


@dataclasses.dataclass
class RequantizeStats:
    changed_floats: int = 0      # Keras elements that changed
    changed_int8: int = 0        # int8/int32 elements whose stored value changed
    clipped: int = 0             # changed kernel elements clipped to ±127

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.changed_floats if self.changed_floats else 0.0


def requantize(previous: bytes, mapping: Sequence[LayerMap], new: Sequence[np.ndarray],
               old: Sequence[np.ndarray]) -> (bytes, RequantizeStats):
    """Writes the elements that changed between `old` and `new` into a copy of `previous`.

    What changed is decided on the values the file stores (the folded ones):
    with BatchNorm and preprocessing frozen, exactly the changed kernel
    elements; with BatchNorm trained, whole channels.

    Args:
      previous: the deployed `.tflite` (its quantization parameters are frozen).
      mapping: from `build_map` on the round-0 file (same layout every round).
      new, old: Keras weights (`model.get_weights()` order) after and before.

    Returns:
      The new file's bytes (same size and layout) and what changed.

    Raises:
      PatchError: a bias without a tensor became non-zero, or a weight is NaN.
    """
    data = bytearray(previous)
    view = ModelFile(previous)
    stats = RequantizeStats()
    for entry in mapping:
        new_kernel, new_bias = folded(entry, new)
        old_kernel, old_bias = folded(entry, old)
        pairs = [(new_kernel, old_kernel, entry.kernel_tensor, True, entry.shared_kernel)]
        if new_bias is not None:
            pairs.append((new_bias, old_bias, entry.bias_tensor, False, entry.shared_bias))
        for values, before, tensor, is_kernel, shared in pairs:
            changed = _bits(values) != _bits(before)
            if not changed.any():
                continue
            if tensor is None:
                raise PatchError(f"layer {entry.layer}: its bias was all zeros at conversion "
                                 "and has no tensor in the .tflite, so it cannot change now")
            if shared:
                raise PatchError(f"layer {entry.layer}: the converter stored its "
                                 f"{'kernel' if is_kernel else 'bias'} in one buffer with "
                                 f"{shared[0]!r} (identical at conversion), so it cannot change "
                                 "on its own; keep it frozen (--bias_policy=frozen)")
            if not np.isfinite(values[changed]).all():
                raise PatchError(f"layer {entry.layer}: new weights contain NaN or infinity")
            quantized = (quantize_kernel(values, tensor) if is_kernel
                         else quantize_bias(values, tensor))
            stored = np.frombuffer(data, quantized.dtype, quantized.size,
                                   view.buffers[tensor.buffer].offset).reshape(quantized.shape)
            stats.changed_floats += int(changed.sum())
            stats.changed_int8 += int(np.count_nonzero(stored[changed] != quantized[changed]))
            if is_kernel:
                scaled = np.abs(values / _broadcast(tensor, values.ndim))
                stats.clipped += int(np.count_nonzero(scaled[changed] > 127.5))
            stored[changed] = quantized[changed]
    return bytes(data), stats


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def int8_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an int8 `.tflite` in the LiteRT interpreter."""
    from tflite_edge.runtime import predict  # pylint: disable=import-outside-toplevel
    return float(np.mean(predict(model_bytes, x) == y))


__all__ = ["convert_int8", "build_map", "with_headroom", "kernel_bounds", "requantize",
           "PatchCost", "tflite_order", "to_tflite_layout", "int8_accuracy", "LayerMap",
           "RequantizeStats"]
