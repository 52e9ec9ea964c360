"""The Keras-to-buffer map: which Keras weights make which `.tflite` buffer, and how.

The converter does not copy Keras weights into the file: it transposes them
(Dense as [out, in], Conv2D as OHWI, DepthwiseConv2D as [1, H, W, C*M]), folds
a BatchNormalization that follows a convolution or a Dense layer into its
kernel and bias (kernel x s, bias -> beta + (bias - mean) x s per output
channel, s = gamma / sqrt(var + eps)), folds an input affine (the raw-input
preprocessing `x * a + b`) into a Dense layer it feeds directly, but not into
a convolution (padding), and folds a constant multiply and add that follows
(a Rescaling: hard sigmoid's x / 6 + 1/2, or a `+ 3`) into the layer before.
Which fusions happened is a fact about one file, so each layer's map is a
*hypothesis* tested against the converter's own bytes: quantizing the
predicted values with the file's scales must reproduce its int8 (and int32)
data. A layer no hypothesis reproduces refuses the export.

With the BatchNorm parameters and the preprocessing fixed after round 0, the
predicted values are the Keras kernel times a constant per element, so a
changed kernel element changes exactly its folded element: partial rounds stay
sparse in the file.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from tflite_edge.errors import PatchError
from tflite_edge.model_file import (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, INT8, INT32,
                                    ModelFile, Tensor)

_INT32_LIMIT = 2 ** 31 - 1
_OPS = {"dense": FULLY_CONNECTED, "conv2d": CONV_2D, "conv1d": CONV_2D,
        "depthwise": DEPTHWISE_CONV_2D}
# Layers that only reshape their input: an input affine reaches through them.
_SHAPE_ONLY = ("Flatten", "Reshape", "InputLayer")


@dataclasses.dataclass(frozen=True)
class BatchNormFold:
    """A BatchNormalization folded into the layer before it (indices in model.weights)."""

    layer: str
    gamma: int
    beta: int
    mean: int
    variance: int
    epsilon: float


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """Where one Keras weight layer lives in the `.tflite` file, and how it was folded.

    Attributes:
      layer: the Keras layer's name.
      layout: dense | conv2d | conv1d | depthwise.
      kernel_index, bias_index: positions in `model.weights` (bias None if the
        layer has none).
      kernel_tensor, bias_tensor: the file's int8 kernel and int32 bias.
      kernel_shape: the Keras kernel's shape.
      output_tensor: the operator's (int8) output.
      input_tensor: the operator's (int8) input.
      batch_norm: the folded BatchNormalization, if any.
      input_affine: (a, b) of the input preprocessing, when the converter
        folded it into this layer.
      output_affine: (c, d), scalars, when the converter folded a following
        Rescaling `y * c + d` into this layer.
      factor: per element of the Keras kernel, what the fold multiplies it by
        (BatchNorm scale x input scale) in round 0; the int8 bounds of later
        rounds divide by it.
      shared_kernel, shared_bias: names of other tensors stored in the same
        buffer as this layer's kernel or bias (the converter deduplicates
        identical constants, such as the all-zero biases of untrained
        BatchNorm): such a tensor cannot change on its own.
    """

    layer: str
    layout: str
    kernel_index: int
    bias_index: Optional[int]
    kernel_tensor: Tensor
    bias_tensor: Optional[Tensor]
    kernel_shape: tuple = ()
    output_tensor: Optional[Tensor] = None
    input_tensor: Optional[Tensor] = None
    batch_norm: Optional[BatchNormFold] = None
    input_affine: Optional[Tuple[np.ndarray, np.ndarray]] = None
    factor: Optional[np.ndarray] = None
    output_affine: Optional[Tuple[float, float]] = None
    shared_kernel: Tuple[str, ...] = ()
    shared_bias: Tuple[str, ...] = ()


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
    return {"Dense": "dense", "Conv2D": "conv2d", "Conv1D": "conv1d",
            "DepthwiseConv2D": "depthwise"}.get(type(layer).__name__)


def _broadcast(tensor: Tensor, ndim: int) -> np.ndarray:
    scales = tensor.scales.astype(np.float64)
    if len(scales) == 1:
        return scales.reshape((1,) * ndim)
    shape = [1] * ndim
    shape[tensor.quantized_dimension] = len(scales)
    return scales.reshape(shape)


def quantize_kernel(values: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Symmetric int8 with the tensor's (frozen) per-channel scales, clipped to ±127."""
    return np.clip(np.round(values / _broadcast(tensor, values.ndim)), -127, 127).astype(np.int8)


def quantize_bias(values: np.ndarray, tensor: Tensor) -> np.ndarray:
    return np.clip(np.round(values / _broadcast(tensor, 1)), -_INT32_LIMIT,
                   _INT32_LIMIT).astype(np.int32)


def _input_axis(layout: str, kernel_ndim: int) -> int:
    """The input-channel axis of a Keras kernel."""
    return 0 if layout == "dense" else kernel_ndim - 2


def folded(entry: LayerMap, weights: Sequence[np.ndarray]) -> Tuple[np.ndarray,
                                                                     Optional[np.ndarray]]:
    """The float values the file stores for this layer: (kernel in TFLite layout, bias).

    Computed in float32, as the converter does.
    """
    kernel = np.asarray(weights[entry.kernel_index], np.float32)
    outputs = kernel.shape[-1] if entry.layout != "depthwise" else \
        kernel.shape[2] * kernel.shape[3]
    bias = (np.asarray(weights[entry.bias_index], np.float32) if entry.bias_index is not None
            else np.zeros(outputs, np.float32))
    if entry.input_affine is not None:
        a, b = entry.input_affine
        axis = _input_axis(entry.layout, kernel.ndim)
        shape = [1] * kernel.ndim
        shape[axis] = -1
        # y = W (a x + b) + c = (W a) x + (W b + c), summed over all but the output axis.
        shift = (kernel * b.reshape(shape)).reshape(-1, kernel.shape[-1]).sum(0) \
            if entry.layout != "depthwise" else (kernel * b.reshape(shape)).sum((0, 1)).ravel()
        bias = (bias + shift).astype(np.float32)
        kernel = (kernel * a.reshape(shape)).astype(np.float32)
    if entry.batch_norm is not None:
        fold = entry.batch_norm
        scale = (np.asarray(weights[fold.gamma], np.float32)
                 / np.sqrt(np.asarray(weights[fold.variance], np.float32)
                           + np.float32(fold.epsilon))).astype(np.float32)
        per_output = scale.reshape(kernel.shape[2], kernel.shape[3]) \
            if entry.layout == "depthwise" else scale
        kernel = (kernel * per_output).astype(np.float32)
        bias = (np.asarray(weights[fold.beta], np.float32)
                + (bias - np.asarray(weights[fold.mean], np.float32)) * scale).astype(np.float32)
    if entry.output_affine is not None:
        c, d = (np.float32(v) for v in entry.output_affine)
        kernel = (kernel * c).astype(np.float32)
        bias = (bias * c + d).astype(np.float32)
    kernel = to_tflite_layout(entry.layout, kernel)
    has_bias = entry.bias_index is not None or entry.batch_norm is not None or \
        entry.input_affine is not None or entry.output_affine is not None
    return kernel, (bias if has_bias else None)


def fold_factor(entry: LayerMap, weights: Sequence[np.ndarray]) -> np.ndarray:
    """What the fold multiplies each Keras kernel element by (1 without folding)."""
    shape = entry.kernel_shape
    factor = np.ones(shape, np.float64)
    if entry.input_affine is not None:
        axis = _input_axis(entry.layout, len(shape))
        broadcast = [1] * len(shape)
        broadcast[axis] = -1
        factor = factor * np.asarray(entry.input_affine[0], np.float64).reshape(broadcast)
    if entry.batch_norm is not None:
        fold = entry.batch_norm
        scale = np.asarray(weights[fold.gamma], np.float64) / np.sqrt(
            np.asarray(weights[fold.variance], np.float64) + fold.epsilon)
        factor = factor * (scale.reshape(shape[2], shape[3]) if entry.layout == "depthwise"
                           else scale)
    if entry.output_affine is not None:
        factor = factor * float(entry.output_affine[0])
    return factor


def _network_inputs(model, layer):
    """The layers feeding `layer` in `model`'s own graph."""
    from tf_keras.src.engine import functional  # pylint: disable=import-outside-toplevel
    for index, node in enumerate(layer._inbound_nodes):  # pylint: disable=protected-access
        if functional._make_node_key(layer.name, index) in model._network_nodes:  # pylint: disable=protected-access
            return list(node.inbound_layers) if isinstance(node.inbound_layers, list) \
                else [node.inbound_layers]
    return []


def _consumers(model, layer):
    return [other for other in model.layers if layer in _network_inputs(model, other)]


def kernel_of(layer):
    """The layer's kernel variable (a DepthwiseConv2D's depthwise kernel), or None."""
    kernel = getattr(layer, "depthwise_kernel", None)
    return kernel if kernel is not None else getattr(layer, "kernel", None)


def _linear(layer) -> bool:
    """Whether `layer` has no activation of its own (so what follows can fold into it)."""
    activation = getattr(layer, "activation", None)
    return activation is None or getattr(activation, "__name__", "") == "linear"


def batch_norm_after(model, layer, positions) -> Optional[BatchNormFold]:
    """The BatchNormalization the converter folds into `layer`, if the graph allows one."""
    if not _linear(layer):
        return None
    consumers = _consumers(model, layer)
    if len(consumers) != 1 or type(consumers[0]).__name__ != "BatchNormalization":
        return None
    norm = consumers[0]
    if norm.axis not in ([-1], [len(layer.output_shape) - 1]) or not (norm.scale and norm.center):
        return None
    return BatchNormFold(norm.name, positions[norm.gamma.ref()], positions[norm.beta.ref()],
                         positions[norm.moving_mean.ref()],
                         positions[norm.moving_variance.ref()], float(norm.epsilon))


def rescaling_after(model, layer, norm: Optional[BatchNormFold]):
    """(c, d) of a scalar Rescaling the converter may fold into `layer` (after its BatchNorm)."""
    if not _linear(layer):
        return None
    tail = model.get_layer(norm.layer) if norm is not None else layer
    consumers = _consumers(model, tail)
    if len(consumers) != 1 or type(consumers[0]).__name__ != "Rescaling":
        return None
    scale, offset = (np.asarray(v, np.float64) for v in (consumers[0].scale,
                                                          consumers[0].offset))
    if scale.size != 1 or offset.size != 1 or float(scale) <= 0:
        return None   # a sign flip or per-channel constant: not a fold the map knows
    return float(scale), float(offset)


def _fed_by_input(model, layer) -> bool:
    """Whether `layer` reads the model's input, through reshapes only."""
    previous = _network_inputs(model, layer)
    while len(previous) == 1 and type(previous[0]).__name__ in _SHAPE_ONLY:
        if type(previous[0]).__name__ == "InputLayer":
            return True
        previous = _network_inputs(model, previous[0])
    return False


def _expand_affine(model, layer, affine) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The input affine per input channel of `layer`, or None if it cannot be expressed.

    A per-channel affine of an image reaches a Dense layer through Flatten as
    the channel pattern repeated (HWC order, channel fastest); a scalar one
    reaches any layer unchanged.
    """
    a, b = (np.asarray(v, np.float32).ravel() for v in affine)
    inputs = layer.input_shape[-1]
    if len(a) == 1 and len(b) == 1:
        return np.full(inputs, a[0], np.float32), np.full(inputs, b[0], np.float32)
    channels = model.input_shape[-1]
    if len(a) != channels or inputs % channels:
        return None
    repeat = inputs // channels
    return np.tile(a, repeat), np.tile(b, repeat)


def build_map(model, model_file: ModelFile, input_affine=None) -> List[LayerMap]:
    """Maps every Keras kernel and bias onto its TFLite tensors, and verifies it.

    Each weight layer is matched with an operator of its kind whose kernel has
    its shape and whose stored values its folding hypothesis reproduces (so
    the converter's operator order does not matter).

    Args:
      model: the Keras model (the one trained; not the export wrapper).
      model_file: the converted file.
      input_affine: (a, b) of the raw-input preprocessing in front of the
        model in the file, if any (see `tflite_edge.convert.convert_int8`).

    Raises:
      PatchError: a layer the export does not support, shared buffers, or a
        layer no hypothesis reproduces.
    """
    positions = {w.ref(): i for i, w in enumerate(model.weights)}
    weights = model.get_weights()
    folds = set()
    candidates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            continue   # checked below: folded into the layer before it, or refused
        layout = _layout_of(layer)
        if layout is None:
            raise PatchError(f"int8 export does not support layer {layer.name} ({kind})")
        candidates.append((layer, layout))
    unmatched = [op for op in model_file.operators if op.opcode in _OPS.values()]
    if len(unmatched) != len(candidates):
        raise PatchError(f"the model has {len(candidates)} weight layers but the .tflite has "
                         f"{len(unmatched)} matching operators")
    mapping = []
    for layer, layout in candidates:
        kernel = kernel_of(layer)
        bias = getattr(layer, "bias", None)
        norm = batch_norm_after(model, layer, positions)
        affines = [None]
        if input_affine is not None and _fed_by_input(model, layer):
            expanded = _expand_affine(model, layer, input_affine)
            if expanded is not None:
                affines.append(expanded)
        outputs = [None]
        rescaling = rescaling_after(model, layer, norm)
        if rescaling is not None:
            outputs.append(rescaling)
        entry = None
        for op in [o for o in unmatched if o.opcode == _OPS[layout]]:
            for affine, output in [(a, o) for a in affines for o in outputs]:
                trial = LayerMap(layer.name, layout, positions[kernel.ref()],
                                 positions[bias.ref()] if bias is not None else None,
                                 model_file.tensors[op.inputs[1]],
                                 model_file.tensors[op.inputs[2]]
                                 if len(op.inputs) > 2 and op.inputs[2] >= 0 else None,
                                 tuple(weights[positions[kernel.ref()]].shape),
                                 model_file.tensors[op.outputs[0]],
                                 model_file.tensors[op.inputs[0]], norm, affine,
                                 output_affine=output)
                if _reproduces(trial, weights, model_file):
                    entry = dataclasses.replace(
                        trial, factor=fold_factor(trial, weights),
                        shared_kernel=_shared_with(trial.kernel_tensor, op, model_file),
                        shared_bias=_shared_with(trial.bias_tensor, op, model_file))
                    unmatched.remove(op)
                    break
            if entry is not None:
                break
        if entry is None:
            raise PatchError(f"layer {layer.name} ({layout}"
                             f"{', BatchNorm ' + norm.layer if norm else ''}): no operator's "
                             "stored values are reproduced by re-quantizing its weights (a "
                             "fusion the map does not know)")
        if norm is not None:
            folds.add(norm.layer)
        mapping.append(entry)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization" and layer.name not in folds:
            raise PatchError(f"int8 export: BatchNorm layer {layer.name} does not follow a "
                             "convolution or Dense layer without activation, so the converter "
                             "cannot fold it into weights")
    return mapping


def _reproduces(entry: LayerMap, weights, model_file: ModelFile) -> bool:
    """Whether quantizing the predicted values gives the file's kernel and bias."""
    kernel, bias = folded(entry, weights)
    tensor = entry.kernel_tensor
    if tensor.type != INT8 or tuple(kernel.shape) != tensor.shape:
        return False
    mismatch = np.abs(quantize_kernel(kernel, tensor).astype(np.int32)
                      - model_file.array(tensor).astype(np.int32))
    # The converter's rounding differs from numpy's on exact halves only.
    if mismatch.max(initial=0) > 1 or np.mean(mismatch > 0) > 0.001:
        return False
    if entry.bias_tensor is None:
        return bias is None or not np.any(bias)
    if bias is None:   # the converter adds a zero bias to a convolution without one
        bias = np.zeros(entry.bias_tensor.shape, np.float32)
    if entry.bias_tensor.type != INT32 or entry.bias_tensor.shape != bias.shape:
        return False
    got = model_file.array(entry.bias_tensor).astype(np.int64)
    # The converter computes in float32: large int32 values may be a few units
    # off (relative error ~6e-8), and folded biases carry float32 rounding.
    tolerance = np.maximum(2, np.abs(got) * 2.0 ** -20)
    return bool(np.all(np.abs(quantize_bias(bias, entry.bias_tensor).astype(np.int64) - got)
                       <= tolerance))


def _shared_with(tensor: Optional[Tensor], op, model_file: ModelFile) -> Tuple[str, ...]:
    """What else reads this tensor's bytes: tensors in its buffer, other operators.

    The converter merges identical constants into one tensor read by several
    operators (two layers with equal weights at round 0), or one buffer
    behind several tensors; a write for one layer would then change the other.
    """
    if tensor is None:
        return ()
    others = [t.name for t in model_file.tensors_of_buffer(tensor.buffer)
              if t.index != tensor.index]
    others += [model_file.tensors[o.outputs[0]].name for o in model_file.operators
               if o.index != op.index and tensor.index in o.inputs and o.outputs]
    return tuple(others)
