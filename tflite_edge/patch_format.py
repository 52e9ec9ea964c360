"""The patch container: a signed header, records, and a trailer checksum.

The byte layout is specified in `PATCH_FORMAT.md` beside this file; the C and
JVM appliers read the same constants. Everything is little-endian.

The signature covers the header alone, and the header holds the SHA-256 of
the body (as a SUIT manifest holds its payload's digest): a device verifies
the signature on the few bytes it keeps in memory, then streams the body and
compares its hash, so it never needs to read anything twice.

Reading is split in two so that nothing an attacker declares is decoded (or
allocated) before it is trusted: `open_envelope` checks the size, magic,
version, flags, the trailing checksum and the body's hash, and hands back the
header; only after the signature, the device's trust state and the base file
have been checked does `decode_records` parse the body, bounding every
declared size by the patch's own length and by the base's real writable
buffers.
"""

import dataclasses
import hashlib
import os
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from tflite_edge import adaptive, keys
from tflite_edge import positions as codes
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ELEMENT_DTYPES, INT8, TYPE_NAMES
from tflite_edge.regions import Region, writable_regions

MAGIC = b"DPUP"
VERSION = 5                  # what the server writes unless told otherwise
VERSIONS = (3, 4, 5)         # what the appliers read
FLAG_SIGNED = 1
HEADER = struct.Struct("<4sHHIQQ32s32sIIQQ8s32s")   # 156 bytes
ELEMENTS_RECORD = struct.Struct("<BBBBBBxxIQIIII")   # 36 bytes, then positions, values
WHOLE_FILE_RECORD = struct.Struct("<B3xQ")           # 12 bytes, then the whole result
ROTATION_RECORD = struct.Struct("<B7x32s")           # 40 bytes: the next public key
# Version 4's elements record: the first six bytes of version 3's, then four
# varints (buffer, changed count, position and value stream lengths); the
# buffer's offset and element count come from the base.
COMPACT_RECORD = struct.Struct("<BBBBBB")
KIND_ELEMENTS, KIND_WHOLE_FILE, KIND_ROTATION, KIND_COMPACT = 1, 3, 4, 5
# kind 2 (version 1's raw bytes) is retired
ELEMENT_KINDS = {3: KIND_ELEMENTS, 4: KIND_COMPACT, 5: KIND_COMPACT}   # per version
# The smallest record of each version, which bounds the record count.
SMALLEST_RECORD = {3: WHOLE_FILE_RECORD.size, 4: COMPACT_RECORD.size + 4,
                   5: COMPACT_RECORD.size + 4}
VALUES_RAW, VALUES_DELTA, VALUES_ADAPTIVE, VALUES_SATURATING = 0, 1, 2, 3
VALUE_CODING_NAMES = {VALUES_RAW: "raw", VALUES_DELTA: "delta", VALUES_ADAPTIVE: "adaptive",
                      VALUES_SATURATING: "ends"}
# The first version that has each coding; the appliers of an older version
# refuse it, so a server writing that version never uses it.
POSITION_CODING_SINCE = {codes.ADAPTIVE: 4, codes.COLUMNS: 5}
VALUE_CODING_SINCE = {VALUES_ADAPTIVE: 4, VALUES_SATURATING: 5}
MAX_VARINT = 2 ** 32 - 1
SIGNATURE_SIZE = 64
CHECKSUM_SIZE = 32
KEY_ID_SIZE = 8
# Sizes the applier accepts; the format itself allows up to 4 GiB.
MAX_RECORDS = 1 << 20
# The body length is a 32-bit field: no patch is longer than this.
MAX_PATCH_SIZE = HEADER.size + 64 + (2 ** 32 - 1) + 32
# The last round is reserved: a device at it could never take another update,
# so a patch for it would freeze the device for good.
MAX_ROUND = 2 ** 32 - 2
# What a device accepts by default at most (a whole-file update is the largest
# patch): the size of the patch file is checked against this before reading.
DEFAULT_MAX_PATCH_BYTES = 512 << 20


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
    release_time: int = 0          # seconds since 1970 (UTC) when the server released it
    expires: int = 0               # seconds since 1970 after which it is refused; 0: never
    key_id: bytes = bytes(KEY_ID_SIZE)   # names the signing key; zero when unsigned
    body_sha256: bytes = bytes(32)

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.version, self.flags, self.round, self.base_size,
                           self.result_size, self.base_sha256, self.result_sha256,
                           self.record_count, self.body_length, self.release_time,
                           self.expires, self.key_id, self.body_sha256)

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)

    @property
    def signature_size(self) -> int:
        return SIGNATURE_SIZE if self.signed else 0

    @property
    def body_start(self) -> int:
        return HEADER.size + self.signature_size

    @property
    def size(self) -> int:
        """The patch's size in bytes, as the header declares it."""
        return self.body_start + self.body_length + CHECKSUM_SIZE


@dataclasses.dataclass
class Record:
    """New values for some elements of one weight buffer, or a whole new file.

    Attributes:
      kind: KIND_ELEMENTS, KIND_WHOLE_FILE or KIND_ROTATION.
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
      raw: the bytes of a whole-file record; the next public key of a
        rotation record.
      coding, parameter: the position code chosen when encoding (parameter:
        the Rice parameter).
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
    changed: Optional[int] = None   # only for a record read without its base
    forced: bool = False            # encode with `coding` and `value_coding` as given (tests)
    # The column code's row length R, and the lengths worth trying when
    # encoding (from the tensor's shape).
    row: int = 0
    rows: Tuple[int, ...] = ()
    # After decoding saturating values: the new value (+-127) where it is the
    # end of the int8 range, 0 where `values` holds the delta.
    ends: Optional[np.ndarray] = None

    @property
    def changed_count(self) -> int:
        return len(self.positions) if self.positions is not None else self.changed

    @property
    def span(self) -> int:
        """Bytes of the file this record may write, from `offset`."""
        if self.kind == KIND_WHOLE_FILE:
            return len(self.raw)
        if self.kind == KIND_ROTATION:
            return 0
        return self.count * ELEMENT_DTYPES[self.element_type].itemsize

    def describe(self) -> str:
        if self.kind == KIND_WHOLE_FILE:
            return f"whole file, {len(self.raw)} bytes"
        if self.kind == KIND_ROTATION:
            return f"key rotation: the next key is {self.raw.hex()} (key id " \
                   f"{hashlib.sha256(self.raw).hexdigest()[:16]})"
        where = f"offset {self.offset:>9}" if self.offset >= 0 else "(read without its base)"
        of = f"{self.count:<8}" if self.offset >= 0 else f"{'?':<8}"
        return (f"buffer {self.buffer:>3} {where}  "
                f"{TYPE_NAMES[self.element_type]:>7} {self.changed_count:>8}/{of} "
                f"positions {codes.CODING_NAMES[self.coding]:>6}"
                f"{_parameter_text(self):<7} "
                f"{self.position_bytes:>7} B  values "
                f"{VALUE_CODING_NAMES[self.value_coding]:>5}"
                f"{f'(k={self.value_parameter})' if self.value_coding == VALUES_DELTA else '':<7}"
                f" {self.value_bytes:>7} B")


def _parameter_text(record: Record) -> str:
    if record.coding == codes.RICE:
        return f"(k={record.parameter})"
    return f"(R={record.row})" if record.coding == codes.COLUMNS else ""


def key_id(public_key: bytes) -> bytes:
    """The 8 bytes a patch header names its signing key by: SHA-256(key)[:8]."""
    return hashlib.sha256(bytes(public_key)).digest()[:KEY_ID_SIZE]


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


def encode_record(record: Record, version: int = VERSION) -> bytes:
    """One record in `version`'s layout, each stream in its smallest coding.

    Version 4 adds the adaptive codes to the choices and writes the compact
    elements header; version 3 writes what its appliers read.
    """
    if record.kind == KIND_WHOLE_FILE:
        return WHOLE_FILE_RECORD.pack(KIND_WHOLE_FILE, len(record.raw)) + record.raw
    if record.kind == KIND_ROTATION:
        return ROTATION_RECORD.pack(KIND_ROTATION, record.raw)
    if version not in VERSIONS:
        raise PatchError(f"cannot write patch format version {version} (versions "
                         f"{VERSIONS[0]} to {VERSIONS[-1]} exist)")
    pos = np.asarray(record.positions, np.int64)
    if record.forced:
        return _encode_forced(record, pos, version)
    record.coding, record.parameter, _ = codes.choose(pos, record.count)
    record.row = 0
    coded = codes.encode(pos, record.count, record.coding, record.parameter)
    if version >= 4 and record.coding != codes.ALL:
        learned = adaptive.encode_positions(pos)
        if len(learned) < len(coded):
            record.coding, record.parameter, coded = codes.ADAPTIVE, 0, learned
        if version >= 5:
            for row in _rows_worth_trying(record, pos, len(coded)):
                learned = adaptive.encode_columns(pos, row)
                if len(learned) + len(write_varint(row)) < len(coded):
                    record.coding, record.parameter, record.row = codes.COLUMNS, 0, row
                    coded = learned
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
        if version >= 4:
            learned = adaptive.encode_values(np.concatenate(list(deltas())))
            if len(learned) < len(values):
                record.value_coding, record.value_parameter = VALUES_ADAPTIVE, 0
                values = learned
        if version >= 5 and record.element_type == INT8:
            learned = adaptive.encode_saturating(old, new)
            if len(learned) < len(values):
                record.value_coding, record.value_parameter = VALUES_SATURATING, 0
                values = learned
    return _pack_elements(record, version, len(pos), coded, values)


def _rows_worth_trying(record: Record, pos: np.ndarray, best: int) -> List[int]:
    """Row lengths for the column code that a quick estimate says may beat `best` bytes.

    The code is one range-coded bit per element up to the last change, which
    is slow to try in Python on large buffers; its static estimate screens
    the candidates first.
    """
    out = []
    for row in sorted(set(record.rows)):
        if not 1 <= row <= min(record.count, adaptive.MAX_COLUMNS) or row == record.count:
            continue
        if adaptive.estimate_columns(pos, row) < 0.97 * best:
            out.append(row)
    return out


def _encode_forced(record: Record, pos: np.ndarray, version: int) -> bytes:
    """The record in the codings it names (every coding of a format, for test seeds)."""
    parameter = 0
    if record.coding == codes.RICE:
        parameter, _ = codes.best_rice_blocks(codes.gap_blocks(pos))
    record.parameter = parameter
    coded = (adaptive.encode_columns(pos, record.row) if record.coding == codes.COLUMNS
             else codes.encode(pos, record.count, record.coding, parameter))
    dtype = ELEMENT_DTYPES[record.element_type]
    new = np.asarray(record.values, dtype)
    zigzag = (zigzag_deltas(np.asarray(record.old_values, dtype), new)
              if record.value_coding != VALUES_RAW else None)
    record.value_parameter = 0
    if record.value_coding == VALUES_RAW:
        values = new.tobytes()
    elif record.value_coding == VALUES_DELTA:
        record.value_parameter, _ = codes.best_rice(zigzag)
        values = codes.rice_encode(zigzag, record.value_parameter)
    elif record.value_coding == VALUES_SATURATING:
        values = adaptive.encode_saturating(np.asarray(record.old_values, dtype), new)
    else:
        values = adaptive.encode_values(zigzag)
    return _pack_elements(record, version, len(pos), coded, values)


def _pack_elements(record: Record, version: int, changed: int, coded: bytes,
                   values: bytes) -> bytes:
    record.position_bytes = len(coded)
    record.value_bytes = len(values)
    if version >= 4:
        return (COMPACT_RECORD.pack(KIND_COMPACT, record.element_type, record.coding,
                                    record.parameter, record.value_coding,
                                    record.value_parameter)
                + b"".join(write_varint(v) for v in (record.buffer, changed, len(coded),
                                                     len(values)))
                + (write_varint(record.row) if record.coding == codes.COLUMNS else b"")
                + coded + values)
    return ELEMENTS_RECORD.pack(KIND_ELEMENTS, record.element_type, record.coding,
                                record.parameter, record.value_coding, record.value_parameter,
                                record.buffer, record.offset, record.count, changed, len(coded),
                                len(values)) + coded + values


def encode(header_round: int, base: bytes, result: bytes, records: List[Record],
           signer=None, release_time: Optional[int] = None, expires: int = 0,
           version: int = VERSION) -> bytes:
    """Builds a patch file.

    Args:
      header_round: the round the result belongs to (replay protection).
      base, result: the model files before and after.
      records: element records for distinct buffers (sorted here by offset),
        or one whole-file record; a key rotation record may come first.
      signer: optional `signing.Signer` (its key id goes into the header).
      release_time: seconds since 1970 (default: `default_release_time()`).
      expires: seconds since 1970 after which devices with a clock refuse
        the patch; 0 for never.
      version: 4, or 3 for appliers that read nothing newer.
    """
    return encode_hashed(header_round, len(base), hashlib.sha256(base).digest(), len(result),
                         hashlib.sha256(result).digest(), records, signer, release_time, expires,
                         version)


def default_release_time() -> int:
    """Now, or SOURCE_DATE_EPOCH where set (reproducible builds, tests)."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH")
    return int(fixed) if fixed and fixed.isdigit() else int(time.time())


def encode_hashed(header_round: int, base_size: int, base_sha256: bytes, result_size: int,
                  result_sha256: bytes, records: List[Record], signer=None,
                  release_time: Optional[int] = None, expires: int = 0,
                  version: int = VERSION) -> bytes:
    """Builds a patch file from the two models' sizes and SHA-256 digests (see `encode`)."""
    if not 0 <= header_round <= MAX_ROUND:
        raise PatchError(f"round {header_round} is outside [0, {MAX_ROUND}] (the last "
                         "round is reserved)")
    release_time = default_release_time() if release_time is None else release_time
    if expires and expires <= release_time:
        raise PatchError(f"the patch would expire ({expires}) before its release "
                         f"({release_time})")
    records = sorted(records, key=lambda r: (r.kind != KIND_ROTATION, r.offset))
    body = b"".join(encode_record(r, version) for r in records)
    header = Header(header_round, base_size, result_size, base_sha256, result_sha256,
                    len(records), len(body), FLAG_SIGNED if signer else 0, version,
                    release_time=release_time, expires=expires,
                    key_id=signer.key_id if signer else bytes(KEY_ID_SIZE),
                    body_sha256=hashlib.sha256(body).digest())
    packed = header.pack()
    signature = signer(packed) if signer else b""
    if signer and len(signature) != SIGNATURE_SIZE:
        raise PatchError("the signer must return a 64-byte Ed25519 signature")
    content = packed + signature + body
    return content + hashlib.sha256(content).digest()


@dataclasses.dataclass
class Envelope:
    """A patch whose size, magic, version, flags, checksum and body hash are verified.

    Nothing of its body has been parsed yet; its signature is not checked.
    """

    header: Header
    data: memoryview           # the whole patch
    signed_part: memoryview    # the header: what the signature covers
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
    verified: bool = False     # set by the applier: its signature was checked

    @property
    def next_key(self) -> Optional[bytes]:
        """The public key a rotation record introduces, if the patch has one."""
        if self.records and self.records[0].kind == KIND_ROTATION:
            return self.records[0].raw
        return None


def parse_header(data) -> Header:
    """The header of a patch, checked for everything that needs no other byte.

    Raises:
      PatchError: too short, wrong magic, version or flags, a key id on an
        unsigned patch, more records than the body can hold.
    """
    if len(data) < HEADER.size:
        raise PatchError(f"patch is truncated ({len(data)} bytes; a patch has at least "
                         f"{HEADER.size + CHECKSUM_SIZE})")
    magic, version, flags, round_, base_size, result_size, base_sha, result_sha, count, \
        body_length, release_time, expires, key_id, body_sha = HEADER.unpack_from(data)
    if bytes(magic) != MAGIC:
        raise PatchError("not a DPU patch (bad magic)")
    if version not in VERSIONS:
        raise PatchError(f"patch format version {version} is not supported (this applier "
                         f"reads versions {VERSIONS[0]} to {VERSIONS[-1]})")
    if flags & ~FLAG_SIGNED:
        raise PatchError(f"unknown patch flags 0x{flags:x}")
    if not flags & FLAG_SIGNED and any(key_id):
        raise PatchError("an unsigned patch names a signing key")
    # Each record takes at least its version's smallest record header.
    if count > MAX_RECORDS or count * SMALLEST_RECORD[version] > body_length:
        raise PatchError(f"patch announces {count} records in a {body_length}-byte body")
    return Header(round_, base_size, result_size, bytes(base_sha), bytes(result_sha), count,
                  body_length, flags, version, release_time, expires, bytes(key_id),
                  bytes(body_sha))


def size_limit(header: Header, base_size: int) -> int:
    """The largest patch of this header worth reading for a base of `base_size` bytes.

    An element patch rewrites at most every element of the base: a bitmap
    (an eighth of the base), raw values (the base again) and 36 bytes of
    framing per record; a whole-file update holds its declared result.
    """
    elements = base_size * 9 // 8 + base_size + 36 * header.record_count
    whole = WHOLE_FILE_RECORD.size + header.result_size
    return header.body_start + ROTATION_RECORD.size + max(elements, whole) + CHECKSUM_SIZE


def check_size(header: Header, actual: int, base_size: Optional[int] = None,
               device_limit: int = DEFAULT_MAX_PATCH_BYTES) -> None:
    """The declared size is the file's, and within what this device reads at all.

    Raises:
      PatchError: the file's size is not the declared one; the declared
        result is larger than `device_limit`; the patch is larger than any
        update of a `base_size`-byte model can be.
    """
    if actual != header.size:
        raise PatchError(f"patch is {actual} bytes but its header announces {header.size} "
                         "(truncated or extended)")
    if base_size is None:
        return
    if header.result_size > device_limit:
        raise PatchError(f"patch ({header.size} bytes, for a {header.result_size}-byte "
                         f"result) is larger than this device accepts ({device_limit} bytes)")
    if header.size > size_limit(header, base_size):
        raise PatchError(f"patch is {header.size} bytes, more than any update of this "
                         f"{base_size}-byte model can be")


def check_hashes(header: Header, content_sha256: bytes, trailer: bytes,
                 body_sha256: bytes) -> None:
    """The trailer is the checksum of the rest, and the body hashes as the header says."""
    if content_sha256 != bytes(trailer):
        raise PatchError("patch checksum mismatch (corrupted in transit)")
    if body_sha256 != header.body_sha256:
        raise PatchError("patch body does not match the SHA-256 in its header")


def open_envelope(data: bytes) -> Envelope:
    """Checks everything about a patch in memory that needs neither its records nor the base.

    Raises:
      PatchError: wrong magic, version or flags, a size that does not match
        the header, a bad checksum or body hash.
    """
    data = memoryview(data).toreadonly()   # slices below are views, not copies
    if len(data) < HEADER.size + CHECKSUM_SIZE:
        raise PatchError(f"patch is truncated ({len(data)} bytes; a patch has at least "
                         f"{HEADER.size + CHECKSUM_SIZE})")
    header = parse_header(data)
    check_size(header, len(data))
    check_hashes(header, hashlib.sha256(data[:-CHECKSUM_SIZE]).digest(),
                 data[-CHECKSUM_SIZE:],
                 hashlib.sha256(data[header.body_start:-CHECKSUM_SIZE]).digest())
    return Envelope(header, data, data[:HEADER.size],
                    bytes(data[HEADER.size:header.body_start]), len(data))


def read_envelope(path: str, base_size: Optional[int] = None,
                  device_limit: int = DEFAULT_MAX_PATCH_BYTES) -> Envelope:
    """Reads a patch file once, as a stream, bounding its size before reading its body.

    The header is read first; the size it declares must be the file's and
    within `size_limit(base_size, device_limit)`, so a junk or hostile file
    costs its first bytes, not its length. The rest is read a chunk at a
    time into one buffer of exactly that size and hashed on the way; what is
    decoded later is that buffer, never a second read of the file.

    Raises:
      PatchError: unreadable, or any check of `open_envelope`.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(HEADER.size)
            if len(first) < HEADER.size or size < HEADER.size + CHECKSUM_SIZE:
                raise PatchError(f"patch is truncated ({size} bytes; a patch has at least "
                                 f"{HEADER.size + CHECKSUM_SIZE})")
            header = parse_header(first)
            check_size(header, size, base_size, device_limit)
            data = bytearray(header.size)
            data[:HEADER.size] = first
            content, body = hashlib.sha256(first), hashlib.sha256()
            view, at, end = memoryview(data), HEADER.size, header.size - CHECKSUM_SIZE
            while at < header.size:
                got = f.readinto(view[at:min(header.size, at + _READ_CHUNK)])
                if not got:
                    raise PatchError(f"patch {path} shrank while it was read")
                piece = view[at:min(at + got, end)]
                content.update(piece)
                if at + len(piece) > header.body_start:
                    body.update(piece[max(0, header.body_start - at):])
                at += got
            if f.read(1):
                raise PatchError(f"patch {path} grew while it was read")
    except OSError as e:
        raise PatchError(f"cannot read patch {path}: {e.strerror}") from None
    view = memoryview(bytes(data))
    check_hashes(header, content.digest(), view[-CHECKSUM_SIZE:], body.digest())
    return Envelope(header, view, view[:HEADER.size],
                    bytes(view[HEADER.size:header.body_start]), header.size)


_READ_CHUNK = 1 << 18


# Lazily computed writable regions of the base (None: no base to check against).
Regions = Optional[Callable[[], Dict[int, Region]]]


def decode_records(envelope: Envelope, regions: Regions = None,
                   allow_whole_file: bool = True, allow_rotation: bool = True) -> Patch:
    """Parses the body of a verified envelope.

    Args:
      envelope: from `open_envelope`.
      regions: returns the base's writable regions (`regions.writable_regions`);
        every element record must address one of them exactly. None only
        when inspecting a patch without its base: records are then bounded
        by the header's base size.
      allow_whole_file: whether a whole-file record is acceptable (a device
        may refuse replacing its model wholesale).
      allow_rotation: whether a key rotation record is acceptable (only in a
        patch verified with the device's key, on a device that keeps state).

    Raises:
      PatchError: a malformed record, one outside the base's weight buffers,
        a refused whole-file update or key rotation.
    """
    h = envelope.header
    at = h.body_start
    end = at + h.body_length
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
        elif kind == KIND_ROTATION:
            record, at = _rotation(data, at, end, h, allow_rotation, not records)
        elif kind == ELEMENT_KINDS[h.version]:
            if known is None and regions is not None:
                known = regions()
            record, at = _elements(data, at, end, h, known)
        else:
            raise PatchError(f"unknown record kind {kind} in a version-{h.version} patch")
        records.append(record)
        if record.offset < 0:
            continue   # inspected without its base: where it writes is unknown
        if record.offset < previous_end:
            raise PatchError("records overlap or are not sorted by offset")
        previous_end = record.offset + record.span
    if at != end:
        raise PatchError(f"patch body has {end - at} stray bytes after its records")
    if not (records and records[0].kind == KIND_WHOLE_FILE) and h.base_size != h.result_size:
        raise PatchError("patch changes the file size; only a whole-file update may")
    if records and all(r.kind == KIND_ROTATION for r in records) \
            and h.base_sha256 != h.result_sha256:
        raise PatchError("a patch that only rotates the key must leave the model as it is")
    return Patch(h, records, envelope.signed_part, envelope.signature, envelope.size)


def decode(data: bytes, base: Optional[bytes] = None) -> Patch:
    """Parses a patch for inspection and tests, against its base if given.

    Without the base, a version-4 elements record shows its numbers only:
    the base says where it writes and how many elements its buffer holds.
    Applying a patch goes through `tflite_edge.apply`, which checks the
    signature, the round and the base before the records are decoded, and
    the records against the base's weight buffers.
    """
    regions = None
    if base is not None:
        regions = lambda: writable_regions(base, len(base))  # noqa: E731
    return decode_records(open_envelope(data), regions)


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


def _rotation(data, at, end, header: Header, allowed: bool, first: bool):
    if not allowed:
        raise PatchError("patch rotates the signing key, which only a signed patch verified "
                         "with the device's key, on a device that keeps a state, may do")
    if not first:
        raise PatchError("a key rotation record must be the patch's first record")
    if at + ROTATION_RECORD.size > end:
        raise PatchError("patch body ends inside a record header")
    if any(data[at + 1:at + 8]):
        raise PatchError("record has non-zero reserved bytes")
    next_key = bytes(data[at + 8:at + ROTATION_RECORD.size])
    try:
        keys.check_public_key(next_key)
    except PatchError as e:
        raise PatchError(f"the rotation's next key is refused: {e}") from None
    return Record(KIND_ROTATION, 0, raw=next_key), at + ROTATION_RECORD.size


def read_varint(data, at: int, end: int) -> Tuple[int, int]:
    """An unsigned LEB128 number below 2^32 in its shortest form, and the offset after it.

    Raises:
      PatchError: it runs past `end`, is longer than five bytes, exceeds
        2^32 - 1 or has a redundant trailing zero byte (one number, one
        spelling, in every applier).
    """
    value = shift = 0
    for i in range(5):
        if at + i >= end:
            raise PatchError("patch body ends inside a record header")
        byte = data[at + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if i and not byte:
                raise PatchError("a record number is not in its shortest form")
            if value > MAX_VARINT:
                raise PatchError("a record number exceeds 2^32 - 1")
            return value, at + i + 1
    raise PatchError("a record number is longer than five bytes")


def write_varint(value: int) -> bytes:
    """The shortest unsigned LEB128 form of 0 <= value < 2^32."""
    if not 0 <= value <= MAX_VARINT:
        raise PatchError(f"{value} does not fit a record number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _elements(data, at, end, header: Header, known: Optional[Dict[int, Region]]):
    """An elements record: version 3's fixed layout or version 4's compact one."""
    kind = data[at]
    if kind == KIND_COMPACT:
        if at + COMPACT_RECORD.size > end:
            raise PatchError("patch body ends inside a record header")
        _, etype, coding, parameter, value_coding, value_parameter = \
            COMPACT_RECORD.unpack_from(data, at)
        after = at + COMPACT_RECORD.size
        numbers = []
        for _ in range(4):
            number, after = read_varint(data, after, end)
            numbers.append(number)
        buffer, changed, pos_len, value_len = numbers
        row = 0
        if coding == codes.COLUMNS:
            row, after = read_varint(data, after, end)
        offset = n = None   # from the base: the buffer's data
        if known is not None and buffer in known:
            offset, n = known[buffer].offset, known[buffer].count
    else:
        if at + ELEMENTS_RECORD.size > end:
            raise PatchError("patch body ends inside a record header")
        (_, etype, coding, parameter, value_coding, value_parameter, buffer, offset, n,
         changed, pos_len, value_len) = ELEMENTS_RECORD.unpack_from(data, at)
        if data[at + 6] or data[at + 7]:
            raise PatchError("record has non-zero reserved bytes")
        after = at + ELEMENTS_RECORD.size
        row = 0
    # Each coding exists from its version on: a patch means the same to every
    # applier, old or new.
    for name, since in ((codes.CODING_NAMES.get(coding), POSITION_CODING_SINCE.get(coding)),
                        (VALUE_CODING_NAMES.get(value_coding),
                         VALUE_CODING_SINCE.get(value_coding))):
        if since is not None and header.version < since:
            raise PatchError(f"{name} codes need patch format version {since}, not "
                             f"{header.version}")
    # A Rice parameter is 0..31, and 0 for codes without one (the spec's rule,
    # so that every applier reads a record the same way).
    if parameter > codes.MAX_RICE_PARAMETER or (coding != codes.RICE and parameter) \
            or value_parameter > codes.MAX_RICE_PARAMETER \
            or (value_coding != VALUES_DELTA and value_parameter):
        raise PatchError(f"record has a Rice parameter out of range ({parameter}, "
                         f"{value_parameter})")
    at = after
    if etype not in ELEMENT_DTYPES:
        raise PatchError(f"record has unknown element type {etype}")
    size = ELEMENT_DTYPES[etype].itemsize
    if known is not None:
        region = known.get(buffer)
        if region is None or region.offset != offset or region.count != n \
                or region.type != etype:
            where = f"{n} {TYPE_NAMES[etype]} at offset {offset}" if n is not None \
                else TYPE_NAMES[etype]
            raise PatchError(f"record for buffer {buffer} ({where}) is not one of this "
                             "model's weight or bias buffers; a patch may write nowhere else")
    elif offset is None:
        # Inspected without its base: where it writes, and so its streams,
        # are unknown; the record's numbers are all there is to show.
        if at + pos_len + value_len > end:
            raise PatchError("patch body ends inside a record's data")
        return Record(KIND_ELEMENTS, -1, buffer, etype, 0, coding=coding, parameter=parameter,
                      position_bytes=pos_len, value_coding=value_coding,
                      value_parameter=value_parameter, value_bytes=value_len,
                      changed=changed), at + pos_len + value_len
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
    # Adaptive codes may spend far less than a bit per code; their counts are
    # bounded by the buffer's element count (changed <= n), which is real.
    if value_coding == VALUES_RAW:
        if value_len != changed * size:
            raise PatchError("raw values do not match the record's element count")
    elif value_coding == VALUES_DELTA and size <= 4:
        if changed * (1 + value_parameter) > 8 * value_len:
            raise PatchError(f"a value stream of {value_len} bytes cannot hold {changed} codes")
    elif value_coding == VALUES_SATURATING:
        if etype != INT8:
            raise PatchError(f"saturating values are for int8 elements, not "
                             f"{TYPE_NAMES[etype]}")
    elif value_coding != VALUES_ADAPTIVE or size > 4:
        raise PatchError(f"unknown value coding {value_coding}")
    if coding == codes.COLUMNS:
        pos = adaptive.decode_columns(bytes(data[at:at + pos_len]), n, changed, row)
    else:
        pos = codes.decode(bytes(data[at:at + pos_len]), n, changed, coding, parameter)
    at += pos_len
    ends = None
    if value_coding == VALUES_RAW:
        values = np.frombuffer(data, ELEMENT_DTYPES[etype], changed, at).copy()
    elif value_coding == VALUES_DELTA:
        values = codes.rice_decode(data[at:at + value_len], changed, value_parameter,
                                   1 << (8 * size))
    elif value_coding == VALUES_SATURATING:
        values, ends = adaptive.decode_saturating(bytes(data[at:at + value_len]), changed)
    else:
        values = adaptive.decode_values(bytes(data[at:at + value_len]), changed, size)
    at += value_len
    return Record(KIND_ELEMENTS, offset, buffer, etype, n, pos, values, coding=coding,
                  parameter=parameter, position_bytes=pos_len, value_coding=value_coding,
                  value_parameter=value_parameter, value_bytes=value_len, row=row,
                  ends=ends), at
