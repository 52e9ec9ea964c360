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
from tflite_edge.model_file import (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, INT8, INT32,
                                    ModelFile, Tensor)

_INT32_LIMIT = 2 ** 31 - 1


def convert_int8(model, representative: np.ndarray) -> bytes:
    """Converts a Keras model to a full-integer int8 `.tflite` (int8 input and output).

    Args:
      model: a `tf_keras` model.
      representative: samples that calibrate the activation ranges (about 100).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = np.asarray(representative, np.float32)
    converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
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


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """Where one Keras layer's kernel and bias live in the `.tflite` file."""

    layer: str
    layout: str                 # dense | conv2d | conv1d | depthwise
    kernel_index: int           # position in model.weights
    bias_index: Optional[int]
    kernel_tensor: Tensor
    bias_tensor: Optional[Tensor]
    kernel_shape: tuple = ()    # Keras layout
    output_tensor: Optional[Tensor] = None   # the operator's (int8) output


_OPS = {"dense": FULLY_CONNECTED, "conv2d": CONV_2D, "conv1d": CONV_2D,
        "depthwise": DEPTHWISE_CONV_2D}


def to_tflite_layout(layout: str, kernel: np.ndarray) -> np.ndarray:
    """Rearranges a Keras kernel into the converter's layout.

    Dense (in, out) -> (out, in); Conv2D HWIO -> OHWI; Conv1D (k, in, out) ->
    (out, 1, k, in); DepthwiseConv2D (h, w, c, m) -> (1, h, w, c*m).
    """
    if layout == "dense":
        return kernel.T
    if layout == "conv2d":
        return kernel.transpose(3, 0, 1, 2)
    if layout == "conv1d":
        return kernel.transpose(2, 0, 1)[:, None, :, :]
    h, w, c, m = kernel.shape
    return kernel.reshape(1, h, w, c * m)


def _layout_of(layer) -> Optional[str]:
    kind = type(layer).__name__
    return {"Dense": "dense", "Conv2D": "conv2d", "Conv1D": "conv1d",
            "DepthwiseConv2D": "depthwise"}.get(kind)


def quantize_kernel(values: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Symmetric int8 with the tensor's (frozen) per-channel scales, clipped to ±127."""
    return np.clip(np.round(values / _broadcast(tensor, values.ndim)), -127, 127).astype(np.int8)


def quantize_bias(values: np.ndarray, tensor: Tensor) -> np.ndarray:
    return np.clip(np.round(values / _broadcast(tensor, 1)), -_INT32_LIMIT,
                   _INT32_LIMIT).astype(np.int32)


def _broadcast(tensor: Tensor, ndim: int) -> np.ndarray:
    scales = tensor.scales.astype(np.float64)
    if len(scales) == 1:
        return scales.reshape((1,) * ndim)
    shape = [1] * ndim
    shape[tensor.quantized_dimension] = len(scales)
    return scales.reshape(shape)


def build_map(model, model_file: ModelFile) -> List[LayerMap]:
    """Maps every Keras kernel and bias onto its TFLite tensor, and verifies it.

    Layers are matched in graph order with the operators of their kind; the
    match is accepted only if quantizing the Keras values with the tensor's
    scales reproduces the converter's int8 (and int32) data.

    Raises:
      PatchError: an unsupported model (BatchNorm folding, shared buffers, a
        layer the converter fused or split) or a mapping that does not verify.
    """
    layers = [l for l in model.layers if l.weights]
    folded = [l.name for l in layers if type(l).__name__ == "BatchNormalization"]
    if folded:
        raise PatchError(f"int8 export does not support BatchNorm yet (layer {folded[0]} is "
                         "folded into the convolution by the converter)")
    positions = {w.ref(): i for i, w in enumerate(model.weights)}
    weights = model.get_weights()
    ops = [op for op in model_file.operators if op.opcode in _OPS.values()]
    kernel_layers = []
    for layer in layers:
        layout = _layout_of(layer)
        if layout is None:
            raise PatchError(f"int8 export does not support layer {layer.name} "
                             f"({type(layer).__name__})")
        kernel_layers.append((layer, layout))
    if len(ops) != len(kernel_layers):
        raise PatchError(f"the model has {len(kernel_layers)} weight layers but the .tflite "
                         f"has {len(ops)} matching operators")
    mapping = []
    for (layer, layout), op in zip(kernel_layers, ops):
        if op.opcode != _OPS[layout]:
            raise PatchError(f"layer {layer.name} ({layout}) maps onto operator {op.index} of "
                             f"another kind")
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None:
            kernel = layer.kernel
        kernel_index = positions[kernel.ref()]
        bias = getattr(layer, "bias", None)
        bias_index = positions[bias.ref()] if bias is not None else None
        kernel_tensor = model_file.tensors[op.inputs[1]]
        bias_tensor = (model_file.tensors[op.inputs[2]]
                       if len(op.inputs) > 2 and op.inputs[2] >= 0 else None)
        entry = LayerMap(layer.name, layout, kernel_index, bias_index, kernel_tensor, bias_tensor,
                         tuple(weights[kernel_index].shape), model_file.tensors[op.outputs[0]])
        _verify(entry, weights, model_file)
        mapping.append(entry)
    return mapping


def _verify(entry: LayerMap, weights, model_file: ModelFile) -> None:
    kernel = to_tflite_layout(entry.layout, weights[entry.kernel_index])
    tensor = entry.kernel_tensor
    if tensor.type != INT8 or tuple(kernel.shape) != tensor.shape:
        raise PatchError(f"layer {entry.layer}: kernel {kernel.shape} does not match the int8 "
                         f"tensor {tensor.name!r} {tensor.shape}")
    mismatch = np.abs(quantize_kernel(kernel, tensor).astype(np.int32)
                      - model_file.array(tensor).astype(np.int32))
    # The converter's rounding can differ from numpy's on exact halves only.
    if mismatch.max(initial=0) > 1 or np.mean(mismatch > 0) > 0.001:
        raise PatchError(f"layer {entry.layer}: re-quantized kernel does not reproduce the "
                         f"converter's values ({np.mean(mismatch > 0):.1%} differ)")
    shared = [t for t in model_file.tensors_of_buffer(tensor.buffer) if t.index != tensor.index]
    if entry.bias_tensor is not None:
        shared += [t for t in model_file.tensors_of_buffer(entry.bias_tensor.buffer)
                   if t.index != entry.bias_tensor.index]
    if shared:
        raise PatchError(f"layer {entry.layer}: its buffer also backs tensor {shared[0].name!r} "
                         "(deduplicated constants cannot be patched separately)")
    if entry.bias_index is not None:
        bias = weights[entry.bias_index]
        if entry.bias_tensor is None:
            if np.any(bias):
                raise PatchError(f"layer {entry.layer}: bias has no tensor in the .tflite")
            return
        if entry.bias_tensor.type != INT32 or entry.bias_tensor.shape != bias.shape:
            raise PatchError(f"layer {entry.layer}: bias does not match tensor "
                             f"{entry.bias_tensor.name!r}")
        got = model_file.array(entry.bias_tensor).astype(np.int64)
        # The converter computes in float32: large int32 values may be a few
        # units off (relative error ~6e-8).
        tolerance = np.maximum(1, np.abs(got) * 2.0 ** -22)
        if np.any(np.abs(quantize_bias(bias, entry.bias_tensor).astype(np.int64) - got)
                  > tolerance):
            raise PatchError(f"layer {entry.layer}: re-quantized bias does not reproduce the "
                             "converter's values")


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
        kernel = to_tflite_layout(entry.layout, weights[entry.kernel_index])
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
            pairs.append((entry.bias_tensor, scales * input_scale, weights[entry.bias_index],
                          quantize_bias))
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
        bounds[entry.kernel_index] = np.broadcast_to(limit, shape).astype(np.float32)
    return bounds


def tflite_order(layout: str, shape: tuple) -> np.ndarray:
    """For each element of the TFLite buffer, the flat index of its Keras element."""
    keras_index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return np.ascontiguousarray(to_tflite_layout(layout, keras_index)).ravel()


class PatchCost:
    """The exact size of the patch that a selection would produce.

    Positions are coded in each buffer's TFLite layout (a Dense kernel is
    stored transposed, so its gaps differ from the Keras order), with the
    cheaper of Rice and bitmap per record, as the patch writer does. A
    selection's cost bounds the real patch: elements whose int8 value ends up
    unchanged only make it smaller.

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
        pairs = [(entry.kernel_index, entry.kernel_tensor, True)]
        if entry.bias_index is not None:
            pairs.append((entry.bias_index, entry.bias_tensor, False))
        for index, tensor, is_kernel in pairs:
            changed = _bits(new[index]) != _bits(old[index])
            if not changed.any():
                continue
            if tensor is None:
                raise PatchError(f"layer {entry.layer}: its bias was all zeros at conversion "
                                 "and has no tensor in the .tflite, so it cannot change now")
            if not np.isfinite(new[index][changed]).all():
                raise PatchError(f"layer {entry.layer}: new weights contain NaN or infinity")
            values = to_tflite_layout(entry.layout, new[index]) if is_kernel else new[index]
            mask = to_tflite_layout(entry.layout, changed) if is_kernel else changed
            quantized = quantize_kernel(values, tensor) if is_kernel else quantize_bias(values, tensor)
            stored = np.frombuffer(data, quantized.dtype, quantized.size,
                                   view.buffers[tensor.buffer].offset).reshape(quantized.shape)
            stats.changed_floats += int(mask.sum())
            stats.changed_int8 += int(np.count_nonzero(stored[mask] != quantized[mask]))
            if is_kernel:
                scaled = np.abs(values / _broadcast(tensor, values.ndim))
                stats.clipped += int(np.count_nonzero(scaled[mask] > 127.5))
            stored[mask] = quantized[mask]
    return bytes(data), stats


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def int8_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an int8 `.tflite` in the LiteRT interpreter."""
    from tflite_edge.runtime import predict  # pylint: disable=import-outside-toplevel
    return float(np.mean(predict(model_bytes, x) == y))


__all__ = ["convert_int8", "build_map", "with_headroom", "kernel_bounds", "requantize",
           "PatchCost", "tflite_order",
           "int8_accuracy", "LayerMap", "RequantizeStats"]
