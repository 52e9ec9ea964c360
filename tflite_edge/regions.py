"""Where a patch may write: the data of a model's weight and bias buffers.

The regions come from the *base file itself*, never from the patch, so a
patch cannot redirect a write into a shape, a scale, an opcode or an offset
of the flatbuffer, whatever its records claim. A buffer is writable when
(`PATCH_FORMAT.md`, "Writable buffers"):

* it holds data inside the flatbuffer (not past it, as models over 2 GB do);
* some operator reads it, and every use of every tensor stored in it is as
  input 1 (weights) or input 2 (bias) of a CONV_2D, DEPTHWISE_CONV_2D or
  FULLY_CONNECTED operator: never an operator's output or intermediate,
  another input position, another operator, or a subgraph input or output;
* all those tensors have one element type, and the data is a whole number of
  elements aligned to their size.

A base whose weights are not raw tensors is refused as a whole
(`NOT_RAW_MESSAGE`): TFLite Micro's lookup-table compression (a
`COMPRESSION_METADATA` entry: the buffers hold packed indices into value
tables), an Edge TPU compiled model (an `edgetpu-custom-op` operator: the
weights live in the compiler's payload) and sparse weight tensors (the buffer
holds only the kept values). Their bytes are not int8 elements at known
positions, so an element record would be meaningless there even when every
hash matches; such devices take signed whole-file updates.

The reader is deliberately small and bounds-checked at every step (the C and
JVM appliers implement the same rules): a malformed base is a PatchError,
never an exception from a generated parser or an out-of-range read.
"""

import dataclasses
import struct
from typing import Dict, Set

from tflite_edge.errors import PatchError
from tflite_edge.model_file import CONV_2D, DEPTHWISE_CONV_2D, ELEMENT_DTYPES, FULLY_CONNECTED

WEIGHT_OPERATORS = (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)
WEIGHT_INPUTS = (1, 2)

# Field numbers of the TFLite schema (a field's vtable slot is 4 + 2 * number).
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS, _MODEL_METADATA = 1, 2, 4, 6
_METADATA_NAME = 0
_CODE_CUSTOM = 1
_TENSOR_SPARSITY = 6
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_TYPE, _TENSOR_BUFFER = 1, 2

# The markers of bases whose weights are not raw tensors (module docstring);
# the C and JVM appliers look for the same ones.
COMPRESSION_METADATA = b"COMPRESSION_METADATA"
EDGETPU_OPERATOR = b"edgetpu-custom-op"
NOT_RAW_MESSAGE = ("the model's weights are not raw tensors ({}): element patches cannot "
                   "rewrite them; send a signed whole-file update")
_OPERATOR_OPCODE, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS, _OPERATOR_INTERMEDIATES = 0, 1, 2, 8
_CODE_DEPRECATED, _CODE_BUILTIN = 0, 3
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Region:
    """The data of one writable buffer."""

    buffer: int
    offset: int      # absolute file offset of the first element
    length: int      # bytes
    type: int        # TFLite TensorType of its elements

    @property
    def count(self) -> int:
        return self.length // ELEMENT_DTYPES[self.type].itemsize


class _Reader:
    """Little-endian reads of a flatbuffer, each checked against the file's size."""

    def __init__(self, data, size: int):
        self.data, self.size = data, size

    def _unpack(self, fmt: str, at: int):
        width = struct.calcsize(fmt)
        if at < 0 or at + width > self.size:
            raise PatchError("the model is not a valid TFLite flatbuffer (a reference "
                             "points outside the file)")
        return struct.unpack_from(fmt, self.data, at)[0]

    def u32(self, at: int) -> int:
        return self._unpack("<I", at)

    def field(self, table: int, number: int) -> int:
        """Absolute position of a table's field, 0 when it is absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * number
        if vtable_size < 4 or slot + 2 > vtable_size:
            return 0
        relative = self._unpack("<H", vtable + slot)
        return table + relative if relative else 0

    def scalar(self, table: int, number: int, fmt: str, default: int = 0) -> int:
        at = self.field(table, number)
        return self._unpack(fmt, at) if at else default

    def indirect(self, at: int) -> int:
        return at + self.u32(at)

    def vector(self, table: int, number: int, width: int):
        """(first element, length) of a vector field; (0, 0) when absent."""
        at = self.field(table, number)
        if not at:
            return 0, 0
        start = self.indirect(at)
        length = self.u32(start)
        if start + 4 + length * width > self.size:
            raise PatchError("the model is not a valid TFLite flatbuffer (a vector runs "
                             "past the end of the file)")
        return start + 4, length

    def table_at(self, vector, index: int) -> int:
        start, length = vector
        if not 0 <= index < length:
            raise PatchError(f"the model is not a valid TFLite flatbuffer (index {index} "
                             f"of a {length}-entry table)")
        return self.indirect(start + 4 * index)

    def string_is(self, table: int, number: int, expected: bytes) -> bool:
        """Whether a string field holds exactly `expected` (False when absent)."""
        start, length = self.vector(table, number, 1)
        return bool(start) and length == len(expected) and \
            bytes(self.data[start:start + length]) == expected

    def ints(self, table: int, number: int):
        start, length = self.vector(table, number, 4)
        return [self._unpack("<i", start + 4 * i) for i in range(length)]


def _refuse_not_raw(read: _Reader, model: int, codes) -> None:
    """PatchError when the file's metadata or operators mark non-raw weights."""
    entries = read.vector(model, _MODEL_METADATA, 4)
    for i in range(entries[1]):
        if read.string_is(read.table_at(entries, i), _METADATA_NAME, COMPRESSION_METADATA):
            raise PatchError(NOT_RAW_MESSAGE.format("compressed for TFLite Micro"))
    for i in range(codes[1]):
        if read.string_is(read.table_at(codes, i), _CODE_CUSTOM, EDGETPU_OPERATOR):
            raise PatchError(NOT_RAW_MESSAGE.format("compiled for the Edge TPU"))


def writable_regions(data, size: int) -> Dict[int, Region]:
    """The writable buffers of a `.tflite` file, by buffer index.

    Args:
      data: the file's bytes (or a read-only memory map of it).
      size: its length.

    Raises:
      PatchError: not a TFLite flatbuffer, a malformed one, or one whose
        weights are not raw tensors.
    """
    if size < 8 or bytes(data[4:8]) != b"TFL3":
        raise PatchError("not a TFLite model (no TFL3 file identifier)")
    read = _Reader(data, size)
    model = read.u32(0)
    codes = read.vector(model, _MODEL_OPERATOR_CODES, 4)
    buffers = read.vector(model, _MODEL_BUFFERS, 4)
    allowed: Set[int] = set()
    refused: Set[int] = set()
    types: Dict[int, Set[int]] = {}
    _refuse_not_raw(read, model, codes)
    subgraphs = read.vector(model, _MODEL_SUBGRAPHS, 4)
    for s in range(subgraphs[1]):
        graph = read.table_at(subgraphs, s)
        tensors = read.vector(graph, _SUBGRAPH_TENSORS, 4)

        def note(index: int, ok: bool) -> None:
            if index < 0:   # an optional input left out
                return
            tensor = read.table_at(tensors, index)
            buffer = read.scalar(tensor, _TENSOR_BUFFER, "<I")
            if buffer == 0:
                return
            if ok and read.field(tensor, _TENSOR_SPARSITY):
                raise PatchError(NOT_RAW_MESSAGE.format("a sparse weight tensor"))
            (allowed if ok else refused).add(buffer)
            types.setdefault(buffer, set()).add(read.scalar(tensor, _TENSOR_TYPE, "<B"))

        operators = read.vector(graph, _SUBGRAPH_OPERATORS, 4)
        for o in range(operators[1]):
            operator = read.table_at(operators, o)
            code = read.table_at(codes, read.scalar(operator, _OPERATOR_OPCODE, "<I"))
            builtin = max(read.scalar(code, _CODE_DEPRECATED, "<b"),
                          read.scalar(code, _CODE_BUILTIN, "<i"))
            for position, index in enumerate(read.ints(operator, _OPERATOR_INPUTS)):
                note(index, builtin in WEIGHT_OPERATORS and position in WEIGHT_INPUTS)
            for number in (_OPERATOR_OUTPUTS, _OPERATOR_INTERMEDIATES):
                for index in read.ints(operator, number):
                    note(index, False)
        for number in (_SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS):
            for index in read.ints(graph, number):
                note(index, False)
    regions = {}
    for index in sorted(allowed - refused):
        kinds = types[index]
        if len(kinds) != 1 or next(iter(kinds)) not in ELEMENT_DTYPES:
            continue
        etype = next(iter(kinds))
        buffer = read.table_at(buffers, index)
        if read.scalar(buffer, _BUFFER_OFFSET, "<Q") or read.scalar(buffer, _BUFFER_SIZE, "<Q"):
            continue   # data stored past the flatbuffer: not patchable
        start, length = read.vector(buffer, _BUFFER_DATA, 1)
        itemsize = ELEMENT_DTYPES[etype].itemsize
        if length and start % itemsize == 0 and length % itemsize == 0:
            regions[index] = Region(index, start, length, etype)
    return regions
