"""Crafted hostile patches for the tiny int8 model, shared by every applier's tests.

Each one is what an attacker who can reach the link (not the signing key)
would send: its checksum is correct, its signature valid where the case
needs one, and, where it matters, its result hash is that of the bytes a
careless applier would write, so that an applier refusing it only at the
result hash has *not* caught it. Every case names the refusal each applier
must give, so a check removed from an applier shows as a different message,
not as a pass.
"""

import dataclasses
import hashlib
import os
import struct
from typing import List, Optional

from tflite_edge import patch_format
from tflite_edge.patch_format import ELEMENTS_RECORD, HEADER, KIND_ELEMENTS, WHOLE_FILE_RECORD
from tflite_edge.regions import writable_regions

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_MODEL = os.path.join(HERE, "fixtures", "tiny_model.tflite")
INT8, INT32 = 9, 2


def tiny_model() -> bytes:
    with open(TINY_MODEL, "rb") as f:
        return f.read()


@dataclasses.dataclass(frozen=True)
class Hostile:
    """A crafted patch and the refusal it must get.

    Attributes:
      name: what it tries.
      patch: its bytes.
      python: a substring of the Python applier's one-line refusal.
      c: a substring of the C applier's.
      signed: whether it carries a valid signature of the test key.
    """

    name: str
    patch: bytes
    python: str
    c: str
    signed: bool = False


def test_key():
    """A fixed Ed25519 key pair (private object, raw public bytes)."""
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ed25519  # pylint: disable=import-outside-toplevel
    private = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"hostile").digest())
    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    return private, public


def test_signer():
    """The test key as a `signing.Signer`."""
    from tflite_edge.signing import Signer  # pylint: disable=import-outside-toplevel
    return Signer(test_key()[0])


def seal(base: bytes, body: bytes, count: int, result: Optional[bytes] = None, *,
         version: int = 3, signer=None, base_size: Optional[int] = None,
         result_size: Optional[int] = None, round_: int = 1, release_time: int = 1,
         expires: int = 0, key_id: Optional[bytes] = None, flags: Optional[int] = None) -> bytes:
    """A patch around `body` whose lengths, hashes, checksum and signature are all correct.

    Version 3 by default (`elements` builds its records); `compact` builds
    version 4's.

    `result` is the file the header declares (default: the base unchanged);
    `signer` a `signing.Signer` (its key id goes in unless `key_id` is given).
    """
    result = base if result is None else result
    if flags is None:
        flags = patch_format.FLAG_SIGNED if signer else 0
    if key_id is None:
        key_id = signer.key_id if signer else bytes(8)
    header = HEADER.pack(patch_format.MAGIC, version, flags,
                         round_, len(base) if base_size is None else base_size,
                         len(result) if result_size is None else result_size,
                         hashlib.sha256(base).digest(), hashlib.sha256(result).digest(), count,
                         len(body), release_time, expires, key_id,
                         hashlib.sha256(body).digest())
    content = header + (signer(header) if signer else b"") + body
    return content + hashlib.sha256(content).digest()


def elements(etype, coding, k, value_coding, value_k, buffer, offset, count, changed,
             positions: bytes, values: bytes) -> bytes:
    """An elements record with any field values at all."""
    return ELEMENTS_RECORD.pack(KIND_ELEMENTS, etype, coding, k, value_coding, value_k, buffer,
                                offset, count, changed, len(positions), len(values)) \
        + positions + values


def compact(etype, coding, k, value_coding, value_k, numbers, positions: bytes,
            values: bytes) -> bytes:
    """A version-4 elements record; `numbers` are the varint bytes (buffer, n, P, V)."""
    return patch_format.COMPACT_RECORD.pack(patch_format.KIND_COMPACT, etype, coding, k,
                                            value_coding, value_k) + numbers + positions + values


def varints(*values) -> bytes:
    return b"".join(patch_format.write_varint(v) for v in values)


def _written(base: bytes, offset: int, data: bytes) -> bytes:
    """What a careless applier produces: `data` written at `offset` (wrapped to 32 bits)."""
    out = bytearray(base)
    at = offset % (1 << 32) % len(base)
    out[at:at + len(data)] = data[:len(base) - at]
    return bytes(out)


_OUTSIDE_PY = "is not one of this model's weight or bias buffers"
_OUTSIDE_C = "writes outside the model's weight and bias buffers"


def cases() -> List[Hostile]:
    """Every crafted case, with correct checksums (and signatures where noted)."""
    base = tiny_model()
    signer = test_signer()
    regions = writable_regions(base, len(base))
    kernel = regions[4]          # the Dense kernel: int8, 48 elements
    shape = 2                    # the Reshape's int32 shape constant (not writable)
    out = []

    def add(name, body, count, python, c, result=None, **seal_args):
        out.append(Hostile(name, seal(base, body, count, result, **seal_args), python, c,
                           "signer" in seal_args))

    # 1. The C applier's old 64-bit wrap: offset + span overflows past 2^64.
    wrap = 2 ** 64 - 2 ** 32 + 100
    # (The C applier's overflow-safe bounds check refuses it before the
    # weight-buffer walk does.)
    add("offset that wraps around 2^64",
        elements(INT8, 0, 0, 0, 0, kernel.buffer, wrap, 2 ** 32 - 100, 1, b"\x00", b"\x7f"), 1,
        _OUTSIDE_PY, "malformed record", _written(base, wrap, b"\x7f"))
    # 2. Sizes the attacker chooses: a record claiming 2^27 or 2^32 - 1 elements.
    for n in (2 ** 27, 2 ** 32 - 1):
        add(f"{n} positions declared (all-coded, delta values)",
            elements(INT8, 2, 0, 1, 0, kernel.buffer, kernel.offset, n, n, b"", b"\x00"), 1,
            _OUTSIDE_PY, "malformed record")
    # 3. One Rice code with a 16-million-bit run of ones: a file applier
    # refuses its size before reading it (no update of a 3 kB model is 2 MB);
    # the C applier, reading in pieces, at the run's first bits past the
    # largest quotient (and `apply_patch` in memory likewise: see
    # test_hostile.py).
    add("Rice code with a 16 MB unary run",
        elements(INT8, 0, 0, 0, 0, kernel.buffer, kernel.offset, kernel.count, 1,
                 b"\xff" * (2 << 20), b"\x7f"), 1,
        "more than any update of this", "malformed record")
    # 4. Flatbuffer tables: a record over the root table (removes Model.subgraphs).
    add("record over the flatbuffer's root table",
        elements(3, 0, 0, 0, 0, kernel.buffer, 16, 8, 1, b"\x00", b"\x00"), 1,
        _OUTSIDE_PY, _OUTSIDE_C, _written(base, 16, b"\x00"))
    # 5. A real buffer that is not a weight: the Reshape's shape constant.
    add("the Reshape's shape constant",
        elements(INT32, 2, 0, 0, 0, shape, 708, 2, 2, b"", struct.pack("<ii", 1, 1 << 30)), 1,
        _OUTSIDE_PY, _OUTSIDE_C, _written(base, 708, struct.pack("<ii", 1, 1 << 30)))
    # 6. A weight buffer under the wrong element type.
    add("int8 weights written as int32",
        elements(INT32, 2, 0, 0, 0, kernel.buffer, kernel.offset, 12, 12, b"",
                 b"\x7f" * 48), 1, _OUTSIDE_PY, _OUTSIDE_C, _written(base, kernel.offset,
                                                                 b"\x7f" * 48))
    # 7. Part of a weight buffer, or past its end.
    for count in (kernel.count - 1, kernel.count + 60):
        add(f"{count} of the kernel's {kernel.count} elements",
            elements(INT8, 0, 0, 0, 0, kernel.buffer, kernel.offset, count, 1, b"\x00", b"\x7f"),
            1, _OUTSIDE_PY, _OUTSIDE_C, _written(base, kernel.offset, b"\x7f"))
    # 8. Another buffer's index with this buffer's offset.
    add("buffer index and offset of different buffers",
        elements(INT8, 0, 0, 0, 0, 8, kernel.offset, kernel.count, 1, b"\x00", b"\x7f"), 1,
        _OUTSIDE_PY, _OUTSIDE_C, _written(base, kernel.offset, b"\x7f"))
    # 9. Version 1 and its raw record kind.
    raw = struct.pack("<B3xQI", 2, 20, 4) + b"\0\0\0\0"
    add("a version-1 raw record over Model.subgraphs", raw, 1, "version 1 is not supported",
        "unsupported patch format version", _written(base, 20, b"\0\0\0\0"), version=1)
    add("kind 2 (raw bytes) in version 3", raw, 1, "unknown record kind 2", "malformed record",
        _written(base, 20, b"\0\0\0\0"))
    # 10. A whole new file, unsigned: refused by the default policy.
    evil = base[:20] + b"\0\0\0\0" + base[24:]
    add("unsigned whole-file update", WHOLE_FILE_RECORD.pack(3, len(evil)) + evil, 1,
        "whole model", "replaces the whole model", evil)
    # 11. Rice parameters where the coding has none.
    add("a Rice parameter on an all-coded record",
        elements(INT32, 2, 255, 0, 0, 3, regions[3].offset, 4, 4, b"", b"\0" * 16), 1,
        "Rice parameter out of range", "malformed record",
        _written(base, regions[3].offset, b"\0" * 16))
    # 12. A record count far beyond what the body holds.
    add("2^32 - 1 records announced",
        elements(INT8, 0, 0, 0, 0, kernel.buffer, kernel.offset, kernel.count, 1, b"\x00",
                 b"\x7f"), 2 ** 32 - 1, "records in a", "malformed record",
        _written(base, kernel.offset, b"\x7f"))
    # 12b. A delta value code equal to its limit: 256 for int8, coded with
    # k = 9 (a zero, then 256 in nine bits), so that no applier's early
    # quotient check catches it and the final bound must.
    add("a delta value code equal to its limit",
        elements(INT8, 0, 0, 1, 9, kernel.buffer, kernel.offset, kernel.count, 1, b"\x00",
                 b"\x00\x02"), 1, "(256) is out of range", "malformed record",
        _written(base, kernel.offset, bytes([(base[kernel.offset] + 256) % 256])))
    # 13. A signed patch with a malformed body still gets to the record checks.
    add("signed, over the root table",
        elements(3, 0, 0, 0, 0, kernel.buffer, 16, 8, 1, b"\x00", b"\x00"), 1,
        _OUTSIDE_PY, _OUTSIDE_C, _written(base, 16, b"\x00"), signer=signer)
    out += _version_4_cases(base, kernel, add)
    return out


def _version_4_cases(base: bytes, kernel, add) -> List[Hostile]:
    """Version 4: the compact record, its numbers, and the adaptive streams."""
    from tflite_edge import adaptive  # pylint: disable=import-outside-toplevel
    one = _written(base, kernel.offset, bytes([(base[kernel.offset] + 1) % 256]))
    raw_one = one[kernel.offset:kernel.offset + 1]
    first = adaptive.encode_positions([0])
    plus_one = adaptive.encode_values([2])

    def v4(name, body, python, c="malformed record", result=one, count=1):
        add(name, body, count, python, c, result, version=4)

    # Each layout belongs to its version.
    add("a compact record in a version-3 patch",
        compact(INT8, 0, 0, 0, 0, varints(kernel.buffer, 1, 1, 1), b"\x00", raw_one), 1,
        "unknown record kind 5", "malformed record", one)
    v4("a version-3 record in a version-4 patch",
       elements(INT8, 0, 0, 0, 0, kernel.buffer, kernel.offset, kernel.count, 1, b"\x00",
                raw_one), "unknown record kind 1")
    add("an adaptive position code in a version-3 patch",
        elements(INT8, 3, 0, 0, 0, kernel.buffer, kernel.offset, kernel.count, 1, first,
                 raw_one), 1, "adaptive codes need patch format version 4",
        "malformed record", one)
    # The buffer index alone names where a compact record writes.
    v4("a compact record over the Reshape's shape constant",
       compact(INT32, 2, 0, 0, 0, varints(2, 2, 0, 8), b"", struct.pack("<ii", 1, 1 << 30)),
       _OUTSIDE_PY, _OUTSIDE_C, _written(base, 708, struct.pack("<ii", 1, 1 << 30)))
    v4("a compact record naming buffer 0",
       compact(INT8, 0, 0, 0, 0, varints(0, 1, 1, 1), b"\x00", raw_one), _OUTSIDE_PY,
       _OUTSIDE_C)
    # Numbers: one spelling each, and 32 bits at most.
    v4("a number with a redundant zero byte",
       compact(INT8, 0, 0, 0, 0, bytes([kernel.buffer | 0x80, 0]) + varints(1, 1, 1), b"\x00",
               raw_one), "not in its shortest form")
    v4("a number above 2^32 - 1",
       compact(INT8, 0, 0, 0, 0, varints(kernel.buffer) + b"\xff\xff\xff\xff\x1f"
               + varints(1, 1), b"\x00", raw_one), "exceeds 2^32 - 1")
    v4("a six-byte number",
       compact(INT8, 0, 0, 0, 0, varints(kernel.buffer) + b"\x81\x80\x80\x80\x80\x00"
               + varints(1, 1), b"\x00", raw_one), "longer than five bytes")
    # Adaptive streams: exactly the encoder's bytes, codes within their limits.
    v4("an adaptive stream that does not start with zero",
       compact(INT8, 3, 0, 0, 0, varints(kernel.buffer, 1, len(first), 1),
               b"\x01" + first[1:], raw_one), "does not start with a zero byte")
    v4("an adaptive stream with a byte after its last code",
       compact(INT8, 3, 0, 0, 0, varints(kernel.buffer, 1, len(first) + 1, 1),
               first + b"\x00", raw_one), "after its last code")
    deltas = [2 * (i % 7) + 1 + (i % 3 == 0) for i in range(kernel.count)]   # never zero
    values = adaptive.encode_values(deltas)
    v4("an adaptive stream cut short",
       compact(INT8, 2, 0, 2, 0, varints(kernel.buffer, kernel.count, 0, len(values) - 4), b"",
               values[:-4]), "ends before its last code", result=None)
    past = adaptive.encode_positions([kernel.count + 200])
    v4("an adaptive position past the buffer",
       compact(INT8, 3, 0, 0, 0, varints(kernel.buffer, 1, len(past), 1), past, raw_one),
       "adaptive code", result=_written(base, kernel.offset + kernel.count + 200, raw_one))
    too_far = _value_stream(128, 0)
    v4("an adaptive int8 delta of +128",
       compact(INT8, 3, 0, 2, 0, varints(kernel.buffer, 1, len(first), len(too_far)), first,
               too_far), "does not fit a 1-byte element",
       result=_written(base, kernel.offset, bytes([(base[kernel.offset] + 128) % 256])))
    v4("a compact record changing more elements than its buffer holds",
       compact(INT8, 2, 0, 2, 0, varints(kernel.buffer, kernel.count + 1, 0, len(plus_one)),
               b"", plus_one), f"record changes {kernel.count + 1} of {kernel.count}")
    v4("version 5's column code in a version-4 patch",
       compact(INT8, 4, 0, 0, 0, varints(kernel.buffer, 1, 1, 1, 4), b"\x00", raw_one),
       "columns codes need patch format version 5, not 4")
    v4("version 5's saturating values in a version-4 patch",
       compact(INT8, 3, 0, 3, 0, varints(kernel.buffer, 1, len(first), 1), first, b"\x00"),
       "ends codes need patch format version 5, not 4")
    _version_5_cases(base, kernel, add, one)
    return []   # added through `add`


def _version_5_cases(base: bytes, kernel, add, one) -> None:
    """Version 5: the column code's row and scan, the saturating values' element type."""
    from tflite_edge import adaptive  # pylint: disable=import-outside-toplevel
    from tflite_edge.regions import writable_regions  # pylint: disable=import-outside-toplevel
    bias = next(r for r in writable_regions(base, len(base)).values() if r.type == INT32)
    first = adaptive.encode_positions([0])
    plus_one = adaptive.encode_saturating([0], [1])
    columns = adaptive.encode_columns([0], 4)
    to_end = _written(base, kernel.offset, bytes([127]))

    def v5(name, body, python, c="malformed record", result=one):
        add(name, body, 1, python, c, result, version=5)

    v5("position coding 5",
       compact(INT8, 5, 0, 0, 0, varints(kernel.buffer, 1, 1, 1), b"\x00", b"\x01"),
       "unknown position coding 5")
    v5("value coding 4",
       compact(INT8, 3, 0, 4, 0, varints(kernel.buffer, 1, len(first), 1), first, b"\x01"),
       "unknown value coding 4")
    v5("saturating values for an int32 bias",
       compact(INT32, 3, 0, 3, 0, varints(bias.buffer, 1, len(first), len(plus_one)), first,
               plus_one), "saturating values are for int8 elements, not int32",
       result=_written(base, bias.offset, struct.pack("<i", 127)))
    for row in (0, kernel.count + 1, adaptive.MAX_COLUMNS + 1):
        v5(f"a column code with a row of {row}",
           compact(INT8, 4, 0, 3, 0, varints(kernel.buffer, 1, len(columns), len(plus_one), row),
                   columns, plus_one), f"a column code's row of {row} elements is outside",
           result=to_end)
    # One change coded, two claimed: the scan reads on past the encoder's
    # flush and runs out of stream.
    two = adaptive.encode_saturating([0, 0], [1, 1])
    v5("a column code that marks fewer changes than its record claims",
       compact(INT8, 4, 0, 3, 0, varints(kernel.buffer, 2, len(columns), len(two), 4), columns,
               two), "ends before its last code", result=to_end)


def _value_stream(magnitude: int, sign: int) -> bytes:
    """An adaptive value stream of one delta, even one no element can take."""
    from tflite_edge import adaptive  # pylint: disable=import-outside-toplevel
    encoder = adaptive.Encoder()
    encoder.ladder(adaptive.Ladder(), magnitude - 1)
    encoder.bit([adaptive.HALF, adaptive.HALF], 0, sign)
    return encoder.finish()


def small_order_keys() -> List[bytes]:
    """Encodings of the eight points of small order (with both sign bits where valid)."""
    ys = ["00" * 32, "01" + "00" * 31, "ec" + "ff" * 30 + "7f",
          "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
          "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"]
    keys = [bytes.fromhex(y) for y in ys]
    keys += [k[:31] + bytes([k[31] | 0x80]) for k in keys[:1] + keys[3:]]
    return keys


def malformed_keys() -> List[bytes]:
    """Not canonical or not on the curve."""
    p = 2 ** 255 - 19
    return [(p).to_bytes(32, "little"), (p + 1).to_bytes(32, "little"),
            (2 ** 255 - 1).to_bytes(32, "little"),
            bytes([1]) + bytes(30) + bytes([0x80]),           # x = 0 with the sign bit set
            bytes([2]) + bytes(31)]                            # y = 2 is not on the curve


@dataclasses.dataclass(frozen=True)
class NotRaw:
    """A base whose weights are not raw tensors, an element patch crafted against it
    (correct hashes: only the not-raw check can refuse it), and a signed
    whole-file update from it, which every applier must still take."""

    name: str
    base: bytes
    patch: bytes
    whole_file: bytes
    result: bytes
    python: str   # the cause in the Python and JVM appliers' message


NOT_RAW = "weights are not raw tensors"


def not_raw_bases() -> List[NotRaw]:
    """The tiny model marked, one way each, as the runtimes mark non-raw weights."""
    import flatbuffers  # pylint: disable=import-outside-toplevel
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

    def pack(model) -> bytes:
        builder = flatbuffers.Builder(4096)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def fresh():
        return schema.ModelT.InitFromPackedBuf(tiny_model(), 0)

    def compressed(model):
        # TFLite Micro's lookup-table compression: a COMPRESSION_METADATA entry.
        data = schema.BufferT()
        data.data = [0] * 16
        model.buffers.append(data)
        entry = schema.MetadataT()
        entry.name, entry.buffer = "COMPRESSION_METADATA", len(model.buffers) - 1
        model.metadata = (model.metadata or []) + [entry]

    def compiled(model):
        # An Edge TPU compiled model names its operator `edgetpu-custom-op`.
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = 32   # CUSTOM
        code.customCode = "edgetpu-custom-op"
        model.operatorCodes.append(code)

    def sparse(model):
        graph = model.subgraphs[0]
        tensor = next(t for t in graph.tensors if t.buffer == 4)   # the Dense kernel
        tensor.sparsity = schema.SparsityParametersT()
        tensor.sparsity.traversalOrder = [0, 1]

    signer = test_signer()
    out = []
    for name, mark, cause in (("TFLite Micro compressed", compressed, "compressed for TFLite"),
                              ("Edge TPU compiled", compiled, "compiled for the Edge TPU"),
                              ("sparse kernel", sparse, "a sparse weight tensor")):
        model = fresh()
        mark(model)
        base = pack(model)
        from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
        kernel = ModelFile(base).buffers[4]
        result = _written(base, kernel.offset, bytes([(base[kernel.offset] + 1) % 256]))
        body = elements(INT8, 0, 0, 0, 0, 4, kernel.offset, kernel.length, 1, b"\x00",
                        result[kernel.offset:kernel.offset + 1])
        target = tiny_model()
        whole = seal(base, WHOLE_FILE_RECORD.pack(3, len(target)) + target, 1, target,
                     signer=signer)
        out.append(NotRaw(name, base, seal(base, body, 1, result, signer=signer), whole,
                          target, cause))
    return out
