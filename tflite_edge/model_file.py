"""A read-only view of a `.tflite` file: buffers, tensors, operators, byte offsets.

Patches address weights by absolute byte offset into the file, so applying
one needs no FlatBuffers parsing at all; this view is what *creates* patches
and maps Keras weights to buffers. It reads the schema bindings shipped with
`ai-edge-litert` and never imports TensorFlow.
"""

import dataclasses
import mmap
from typing import List, Optional, Tuple

import numpy as np

from tflite_edge.errors import PatchError

# TFLite TensorType codes and the numpy types of their elements.
FLOAT32, INT32, UINT8, INT16, INT8, INT64 = 0, 2, 3, 7, 9, 4
ELEMENT_DTYPES = {FLOAT32: np.dtype("<f4"), INT32: np.dtype("<i4"), UINT8: np.dtype("u1"),
                  INT16: np.dtype("<i2"), INT8: np.dtype("i1"), INT64: np.dtype("<i8")}
TYPE_NAMES = {FLOAT32: "float32", INT32: "int32", UINT8: "uint8", INT16: "int16",
              INT8: "int8", INT64: "int64"}

# Builtin operator codes of the layers whose weights patches rewrite.
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED = 3, 4, 9
CUSTOM = 32
_POOL_OPTIONS = 5   # BuiltinOptions.Pool2DOptions


@dataclasses.dataclass(frozen=True)
class Buffer:
    index: int
    offset: int   # absolute file offset of the first data byte (0 if empty)
    length: int


@dataclasses.dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    type: int
    shape: Tuple[int, ...]
    buffer: int
    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int
    scale_offset: int = 0   # absolute file offset of the float32 scale vector
    shape_signature: Optional[Tuple[int, ...]] = None   # -1 for a dynamic dimension


@dataclasses.dataclass(frozen=True)
class Operator:
    index: int
    opcode: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    custom_code: str = ""              # for CUSTOM operators
    fused_activation: int = 0          # of pooling operators (0: none)

    @property
    def name(self) -> str:
        """The builtin operator's schema name (CONV_2D, ...), or CUSTOM(code)."""
        if self.opcode == CUSTOM:
            return f"CUSTOM({self.custom_code})"
        return builtin_names().get(self.opcode, f"BUILTIN_{self.opcode}")


def builtin_names():
    """Builtin operator codes to their schema names."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


class ModelFile:
    """Parses a TFLite flatbuffer held in memory (subgraph 0).

    Args:
      data: the file's bytes, or a read-only memory map of it (parsed in
        place: only the pages holding metadata are read).

    Raises:
      PatchError: not a TFLite file, malformed, or using features patches do not
        cover (several subgraphs, buffers stored outside the flatbuffer).
    """

    def __init__(self, data: bytes):
        self.data = data if isinstance(data, (bytes, mmap.mmap)) else bytes(data)
        if len(self.data) < 8 or self.data[4:8] != b"TFL3":
            raise PatchError("not a TFLite model (no TFL3 file identifier)")
        try:
            self._parse()
        except PatchError:
            raise
        except Exception as e:  # the generated reader raises anything on bad input
            raise PatchError(f"malformed TFLite model ({type(e).__name__}: {e})") from None

    @classmethod
    def from_path(cls, path: str) -> "ModelFile":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise PatchError(f"cannot read model {path}: {e.strerror}") from None

    def _parse(self):
        from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
        model = schema.Model.GetRootAsModel(self.data, 0)
        if model.SubgraphsLength() != 1:
            raise PatchError(f"models with {model.SubgraphsLength()} subgraphs are not supported")
        self.buffers: List[Buffer] = []
        for i in range(model.BuffersLength()):
            b = model.Buffers(i)
            if b.Offset() > 1:
                raise PatchError("buffers stored after the flatbuffer (models over 2 GB) "
                                 "are not supported")
            length = b.DataLength()
            offset = b._tab.Vector(b._tab.Offset(4)) if length else 0  # pylint: disable=protected-access
            if offset + length > len(self.data):
                raise PatchError(f"buffer {i} runs past the end of the file")
            self.buffers.append(Buffer(i, offset, length))
        graph = model.Subgraphs(0)
        self.tensors: List[Tensor] = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            q = t.Quantization()
            scales = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else np.zeros(0)
            zeros = (q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength()
                     else np.zeros(0, np.int64))
            slot = q._tab.Offset(8) if q is not None else 0  # pylint: disable=protected-access
            scale_offset = q._tab.Vector(slot) if slot else 0  # pylint: disable=protected-access
            signature = (tuple(int(d) for d in t.ShapeSignatureAsNumpy())
                         if t.ShapeSignatureLength() else None)
            self.tensors.append(Tensor(
                i, (t.Name() or b"").decode("utf-8", "replace"), t.Type(),
                tuple(int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else [])),
                t.Buffer(), np.asarray(scales, np.float32), np.asarray(zeros, np.int64),
                q.QuantizedDimension() if q is not None else 0, scale_offset, signature))
        self.operators: List[Operator] = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            opcode = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            options = op.BuiltinOptions()
            activation = 0
            if options is not None and op.BuiltinOptionsType() == _POOL_OPTIONS:
                pool = schema.Pool2DOptions()
                pool.Init(options.Bytes, options.Pos)
                activation = pool.FusedActivationFunction()
            self.operators.append(Operator(
                i, opcode, tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else (),
                tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else (),
                (code.CustomCode() or b"").decode("utf-8", "replace"), activation))
        self.inputs = tuple(int(v) for v in graph.InputsAsNumpy())
        self.outputs = tuple(int(v) for v in graph.OutputsAsNumpy())

    def tensors_of_buffer(self, index: int) -> List[Tensor]:
        """Every tensor backed by buffer `index` (the converter deduplicates)."""
        return [t for t in self.tensors if t.buffer == index]

    def buffer_type(self, index: int) -> Optional[int]:
        """The element type of a buffer's tensors; None if unused or ambiguous."""
        types = {t.type for t in self.tensors_of_buffer(index)}
        return types.pop() if len(types) == 1 else None

    def array(self, tensor: Tensor) -> np.ndarray:
        """A tensor's constant data as a read-only numpy array in its TFLite layout."""
        buffer = self.buffers[tensor.buffer]
        dtype = ELEMENT_DTYPES[tensor.type]
        flat = np.frombuffer(self.data, dtype, buffer.length // dtype.itemsize, buffer.offset)
        return flat.reshape(tensor.shape)
