"""The patch container: header, records, optional signature, trailer checksum.

The byte layout is specified in `PATCH_FORMAT.md` beside this file; the C and
JVM appliers read the same constants. Everything is little-endian.

Reading is split in two so that nothing an attacker declares is decoded (or
allocated) before it is trusted: `open_envelope` checks the size, magic,
version, flags and trailing checksum and hands back the signed part; only
after the signature, the device's round and the base file have been checked
does `decode_records` parse the body, bounding every declared size by the
patch's own length and by the base's real writable buffers.
"""

import dataclasses
import hashlib
import struct
from typing import Callable, Dict, List, Optional

import numpy as np

from tflite_edge import positions as codes
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES, TYPE_NAMES
from tflite_edge.regions import Region

MAGIC = b"DPUP"
VERSION = 2
FLAG_SIGNED = 1
HEADER = struct.Struct("<4sHHIQQ32s32sII")          # 100 bytes
ELEMENTS_RECORD = struct.Struct("<BBBBBBxxIQIIII")   # 36 bytes, then positions, values
WHOLE_FILE_RECORD = struct.Struct("<B3xQ")           # 12 bytes, then the whole result
KIND_ELEMENTS, KIND_WHOLE_FILE = 1, 3   # kind 2 (raw bytes anywhere, version 1) is retired
VALUES_RAW, VALUES_DELTA = 0, 1
VALUE_CODING_NAMES = {VALUES_RAW: "raw", VALUES_DELTA: "delta"}
SIGNATURE_SIZE = 64
CHECKSUM_SIZE = 32
# Sizes the applier accepts; the format itself allows up to 4 GiB.
MAX_RECORDS = 1 << 20
# The body length is a 32-bit field: no patch is longer than this.
MAX_PATCH_SIZE = 100 + (2 ** 32 - 1) + 64 + 32


@dataclasses.dataclass(frozen=True)
class Header:
    """What a patch applies to and what it must produce."""

    round: int
    base_size: int
    result_size: int
    base_sha256: bytes
    result_sha256: bytes
    record_count: int
    body_length: int
    flags: int = 0
    version: int = VERSION

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.version, self.flags, self.round, self.base_size,
                           self.result_size, self.base_sha256, self.result_sha256,
                           self.record_count, self.body_length)

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)


@dataclasses.dataclass
class Record:
    """New values for some elements of one weight buffer, or a whole new file.

    Attributes:
      kind: KIND_ELEMENTS or KIND_WHOLE_FILE.
      offset: absolute file offset of the buffer's first element (0 for a
        whole file).
      buffer: index of the buffer in the model (checked against the base).
      element_type: TFLite TensorType code of the elements.
      count: number of elements in the buffer.
      positions: sorted indices of the changed elements.
      values: their new values (numpy array of the element type); after
        decoding a delta-coded record, the zigzag-mapped deltas (uint64).
      old_values: the base's values at `positions`, which lets the writer
        code deltas (None: raw values only).
      raw: the bytes of a whole-file record.
      coding, parameter: the position code chosen when encoding.
      value_coding, value_parameter: the value code chosen when encoding.
    """

    kind: int
    offset: int
    buffer: int = -1
    element_type: int = 0
    count: int = 0
    positions: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None
    raw: bytes = b""
    coding: int = codes.RICE
    parameter: int = 0
    position_bytes: int = 0
    old_values: Optional[np.ndarray] = None
    value_coding: int = VALUES_RAW
    value_parameter: int = 0
    value_bytes: int = 0

    @property
    def span(self) -> int:
        """Bytes of the file this record may write, from `offset`."""
        if self.kind == KIND_WHOLE_FILE:
            return len(self.raw)
        return self.count * ELEMENT_DTYPES[self.element_type].itemsize

    def describe(self) -> str:
        if self.kind == KIND_WHOLE_FILE:
            return f"whole file, {len(self.raw)} bytes"
        return (f"buffer {self.buffer:>3} offset {self.offset:>9}  "
                f"{TYPE_NAMES[self.element_type]:>7} {len(self.positions):>8}/{self.count:<8} "
                f"positions {codes.CODING_NAMES[self.coding]:>6}"
                f"{f'(k={self.parameter})' if self.coding == codes.RICE else '':<7} "
                f"{self.position_bytes:>7} B  values "
                f"{VALUE_CODING_NAMES[self.value_coding]:>5}"
                f"{f'(k={self.value_parameter})' if self.value_coding == VALUES_DELTA else '':<7}"
                f" {self.value_bytes:>7} B")


def zigzag_deltas(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(new - old) modulo the element width, as a signed number, zigzag-mapped.

    Works on bit patterns, so it is exact for every element type: 0 -> 0,
    -1 -> 1, 1 -> 2, -2 -> 3, ...
    """
    size = old.dtype.itemsize
    bits = np.uint64(8 * size)
    modulus_mask = np.uint64((1 << (8 * size)) - 1)
    a = old.view(f"u{size}").astype(np.uint64)
    b = new.view(f"u{size}").astype(np.uint64)
    delta = (b - a) & modulus_mask
    negative = delta >> (bits - np.uint64(1))
    magnitude = np.where(negative == 1, (modulus_mask - delta) + np.uint64(1), delta)
    return np.where(negative == 1, magnitude * np.uint64(2) - np.uint64(1),
                    magnitude * np.uint64(2))


def add_deltas(old: np.ndarray, zigzag: np.ndarray) -> np.ndarray:
    """Inverse of `zigzag_deltas`: the new values from the old ones."""
    size = old.dtype.itemsize
    modulus_mask = np.uint64((1 << (8 * size)) - 1)
    zigzag = zigzag.astype(np.uint64)
    odd = (zigzag & np.uint64(1)) == 1
    half = (zigzag + np.uint64(1)) >> np.uint64(1)
    step = np.where(odd, (modulus_mask - half + np.uint64(1)) & modulus_mask, zigzag >> np.uint64(1))
    a = old.view(f"u{size}").astype(np.uint64)
    return ((a + step) & modulus_mask).astype(f"u{size}").view(old.dtype)


def encode_record(record: Record) -> bytes:
    if record.kind == KIND_WHOLE_FILE:
        return WHOLE_FILE_RECORD.pack(KIND_WHOLE_FILE, len(record.raw)) + record.raw
    pos = np.asarray(record.positions, np.int64)
    record.coding, record.parameter, _ = codes.choose(pos, record.count)
    coded = codes.encode(pos, record.count, record.coding, record.parameter)
    record.position_bytes = len(coded)
    dtype = ELEMENT_DTYPES[record.element_type]
    new = np.asarray(record.values, dtype)
    values = new.tobytes()
    record.value_coding, record.value_parameter = VALUES_RAW, 0
    if record.old_values is not None and dtype.itemsize <= 4:
        old = np.asarray(record.old_values, dtype)

        def deltas():
            for first in range(0, len(new), codes.BLOCK):
                yield zigzag_deltas(old[first:first + codes.BLOCK], new[first:first + codes.BLOCK])

        parameter, bits = codes.best_rice_blocks(deltas())
        if (bits + 7) // 8 < len(values):
            record.value_coding, record.value_parameter = VALUES_DELTA, parameter
            values = codes.rice_encode_blocks(deltas(), parameter)
    record.value_bytes = len(values)
    return ELEMENTS_RECORD.pack(KIND_ELEMENTS, record.element_type, record.coding,
                                record.parameter, record.value_coding, record.value_parameter,
                                record.buffer, record.offset, record.count, len(pos), len(coded),
                                len(values)) + coded + values


def encode(header_round: int, base: bytes, result: bytes, records: List[Record],
           signer=None) -> bytes:
    """Builds a patch file.

    Args:
      header_round: the round the result belongs to (replay protection).
      base, result: the model files before and after.
      records: element records for distinct buffers (sorted here by offset),
        or one whole-file record.
      signer: optional callable(bytes) -> 64-byte Ed25519 signature.
    """
    return encode_hashed(header_round, len(base), hashlib.sha256(base).digest(), len(result),
                         hashlib.sha256(result).digest(), records, signer)


def encode_hashed(header_round: int, base_size: int, base_sha256: bytes, result_size: int,
                  result_sha256: bytes, records: List[Record], signer=None) -> bytes:
    """Builds a patch file from the two models' sizes and SHA-256 digests (see `encode`)."""
    records = sorted(records, key=lambda r: r.offset)
    body = b"".join(encode_record(r) for r in records)
    header = Header(header_round, base_size, result_size, base_sha256, result_sha256,
                    len(records), len(body), FLAG_SIGNED if signer else 0)
    signed_part = header.pack() + body
    signature = signer(signed_part) if signer else b""
    if signer and len(signature) != SIGNATURE_SIZE:
        raise PatchError("the signer must return a 64-byte Ed25519 signature")
    content = signed_part + signature
    return content + hashlib.sha256(content).digest()


@dataclasses.dataclass
class Envelope:
    """A patch whose size, magic, version, flags and checksum are verified.

    Nothing of its body has been parsed yet.
    """

    header: Header
    data: memoryview           # the whole patch
    signed_part: memoryview    # header and body: what the signature covers
    signature: bytes
    size: int


@dataclasses.dataclass
class Patch:
    """A parsed, checksum-verified patch."""

    header: Header
    records: List[Record]
    signed_part: memoryview
    signature: bytes
    size: int


def open_envelope(data: bytes) -> Envelope:
    """Checks everything about a patch that needs neither its body nor the base.

    Raises:
      PatchError: wrong magic, version or flags, a size that does not match
        the header, a bad checksum.
    """
    data = memoryview(data).toreadonly()   # slices below are views, not copies
    if len(data) < HEADER.size + CHECKSUM_SIZE:
        raise PatchError(f"patch is truncated ({len(data)} bytes; a patch has at least "
                         f"{HEADER.size + CHECKSUM_SIZE})")
    magic, version, flags, round_, base_size, result_size, base_sha, result_sha, count, \
        body_length = HEADER.unpack_from(data)
    if bytes(magic) != MAGIC:
        raise PatchError("not a DPU patch (bad magic)")
    if version != VERSION:
        raise PatchError(f"patch format version {version} is not supported (this applier "
                         f"reads version {VERSION})")
    signature_size = SIGNATURE_SIZE if flags & FLAG_SIGNED else 0
    expected = HEADER.size + body_length + signature_size + CHECKSUM_SIZE
    if len(data) != expected:
        raise PatchError(f"patch is {len(data)} bytes but its header announces {expected} "
                         "(truncated or extended)")
    if hashlib.sha256(data[:-CHECKSUM_SIZE]).digest() != data[-CHECKSUM_SIZE:]:
        raise PatchError("patch checksum mismatch (corrupted in transit)")
    if flags & ~FLAG_SIGNED:
        raise PatchError(f"unknown patch flags 0x{flags:x}")
    # The smallest record is a 12-byte whole-file header.
    if count > MAX_RECORDS or count * WHOLE_FILE_RECORD.size > body_length:
        raise PatchError(f"patch announces {count} records in a {body_length}-byte body")
    header = Header(round_, base_size, result_size, base_sha, result_sha, count, body_length,
                    flags, version)
    body_end = HEADER.size + body_length
    return Envelope(header, data, data[:body_end],
                    bytes(data[body_end:body_end + signature_size]), len(data))


# Lazily computed writable regions of the base (None: no base to check against).
Regions = Optional[Callable[[], Dict[int, Region]]]


def decode_records(envelope: Envelope, regions: Regions = None,
                   allow_whole_file: bool = True) -> Patch:
    """Parses the body of a verified envelope.

    Args:
      envelope: from `open_envelope`.
      regions: returns the base's writable regions (`regions.writable_regions`);
        every element record must address one of them exactly. None only
        when inspecting a patch without its base: records are then bounded
        by the header's base size.
      allow_whole_file: whether a whole-file record is acceptable (a device
        may refuse replacing its model wholesale).

    Raises:
      PatchError: a malformed record, one outside the base's weight buffers,
        or a refused whole-file update.
    """
    h = envelope.header
    at, end = HEADER.size, HEADER.size + h.body_length
    data = envelope.data
    records: List[Record] = []
    previous_end = 0
    known = None   # walked at the first elements record: a whole file needs none
    for _ in range(h.record_count):
        if at + 1 > end:
            raise PatchError("patch body ends before its last record")
        kind = data[at]
        if kind == KIND_WHOLE_FILE:
            record, at = _whole_file(data, at, end, h, allow_whole_file)
        elif kind == KIND_ELEMENTS:
            if known is None and regions is not None:
                known = regions()
            record, at = _elements(data, at, end, h, known)
        else:
            raise PatchError(f"unknown record kind {kind}")
        if record.offset < previous_end:
            raise PatchError("records overlap or are not sorted by offset")
        previous_end = record.offset + record.span
        records.append(record)
    if at != end:
        raise PatchError(f"patch body has {end - at} stray bytes after its records")
    if not (records and records[0].kind == KIND_WHOLE_FILE) and h.base_size != h.result_size:
        raise PatchError("patch changes the file size; only a whole-file update may")
    return Patch(h, records, envelope.signed_part, envelope.signature, envelope.size)


def decode(data: bytes) -> Patch:
    """Parses a patch without its base (for inspection and tests).

    Applying a patch goes through `tflite_edge.apply`, which checks the
    signature, the round and the base before the records are decoded, and
    the records against the base's weight buffers.
    """
    return decode_records(open_envelope(data))


def _whole_file(data, at, end, header: Header, allowed: bool):
    if not allowed:
        raise PatchError("patch replaces the whole model, which this device does not accept "
                         "(whole-file updates are refused by its configuration)")
    if header.record_count != 1:
        raise PatchError("a whole-file record must be the patch's only record")
    if at + WHOLE_FILE_RECORD.size > end:
        raise PatchError("patch body ends inside a record header")
    _, length = WHOLE_FILE_RECORD.unpack_from(data, at)
    if any(data[at + 1:at + 4]):
        raise PatchError("record has non-zero reserved bytes")
    at += WHOLE_FILE_RECORD.size
    if length != header.result_size or length != end - at:
        raise PatchError(f"whole-file record holds {length} bytes; the header's result has "
                         f"{header.result_size} and the body {end - at}")
    return Record(KIND_WHOLE_FILE, 0, raw=bytes(data[at:end])), end


def _elements(data, at, end, header: Header, known: Optional[Dict[int, Region]]):
    if at + ELEMENTS_RECORD.size > end:
        raise PatchError("patch body ends inside a record header")
    (_, etype, coding, parameter, value_coding, value_parameter, buffer, offset, n,
     changed, pos_len, value_len) = ELEMENTS_RECORD.unpack_from(data, at)
    if data[at + 6] or data[at + 7]:
        raise PatchError("record has non-zero reserved bytes")
    # A Rice parameter is 0..31, and 0 for codes without one (the spec's rule,
    # so that every applier reads a record the same way).
    if parameter > codes.MAX_RICE_PARAMETER or (coding != codes.RICE and parameter) \
            or value_parameter > codes.MAX_RICE_PARAMETER \
            or (value_coding != VALUES_DELTA and value_parameter):
        raise PatchError(f"record has a Rice parameter out of range ({parameter}, "
                         f"{value_parameter})")
    at += ELEMENTS_RECORD.size
    if etype not in ELEMENT_DTYPES:
        raise PatchError(f"record has unknown element type {etype}")
    size = ELEMENT_DTYPES[etype].itemsize
    if known is not None:
        region = known.get(buffer)
        if region is None or region.offset != offset or region.count != n \
                or region.type != etype:
            raise PatchError(f"record for buffer {buffer} ({n} {TYPE_NAMES[etype]} at offset "
                             f"{offset}) is not one of this model's weight or bias buffers; "
                             "a patch may write nowhere else")
    elif offset % size or offset + n * size > header.base_size:
        raise PatchError(f"record at offset {offset} is misaligned or runs past the end of "
                         f"the {header.base_size}-byte model")
    if changed > n or changed == 0:
        raise PatchError(f"record changes {changed} of {n} elements")
    if at + pos_len + value_len > end:
        raise PatchError("patch body ends inside a record's data")
    # Every count is bounded by the bytes that code it before anything is
    # decoded: a value costs a whole element raw or at least k + 1 bits as
    # a delta, so a record cannot make the decoder allocate more than a
    # small multiple of the patch's own size.
    if value_coding == VALUES_RAW:
        if value_len != changed * size:
            raise PatchError("raw values do not match the record's element count")
    elif value_coding == VALUES_DELTA and size <= 4:
        if changed * (1 + value_parameter) > 8 * value_len:
            raise PatchError(f"a value stream of {value_len} bytes cannot hold {changed} codes")
    else:
        raise PatchError(f"unknown value coding {value_coding}")
    pos = codes.decode(data[at:at + pos_len], n, changed, coding, parameter)
    at += pos_len
    if value_coding == VALUES_RAW:
        values = np.frombuffer(data, ELEMENT_DTYPES[etype], changed, at).copy()
    else:
        values = codes.rice_decode(data[at:at + value_len], changed, value_parameter,
                                   1 << (8 * size))
    at += value_len
    return Record(KIND_ELEMENTS, offset, buffer, etype, n, pos, values, coding=coding,
                  parameter=parameter, position_bytes=pos_len, value_coding=value_coding,
                  value_parameter=value_parameter, value_bytes=value_len), at
