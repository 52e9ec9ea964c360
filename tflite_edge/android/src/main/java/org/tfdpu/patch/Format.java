package org.tfdpu.patch;

/** Constants and little-endian readers of the patch format (PATCH_FORMAT.md, versions 3 to 5). */
final class Format {
  /** The newest version read; every version from OLDEST_VERSION on is read too. */
  static final int VERSION = 5;
  static final int OLDEST_VERSION = 3;
  static final int FLAG_SIGNED = 1;
  static final int HEADER_SIZE = 156;
  static final int KEY_ID_SIZE = 8;
  static final int KIND_ROTATION = 4;
  static final int ROTATION_HEADER = 40;
  /** The last round is reserved: a device there could never be updated again. */
  static final long MAX_ROUND = 0xfffffffeL;
  /** Rounds an unsigned patch may advance a device, by default. */
  static final long DEFAULT_MAX_ROUND_JUMP = 16;
  /** The largest update (a whole file) a device reads, by default. */
  static final long DEFAULT_MAX_PATCH_BYTES = 512L << 20;
  static final int SIGNATURE_SIZE = 64;
  static final int CHECKSUM_SIZE = 32;
  static final int KIND_ELEMENTS = 1;
  static final int KIND_WHOLE_FILE = 3;
  /** Version 4's elements record: six bytes, then four varints; the base gives the rest. */
  static final int KIND_COMPACT = 5;
  static final int COMPACT_FIXED = 6;
  static final int ELEMENTS_HEADER = 36;
  static final int WHOLE_FILE_HEADER = 12;
  static final int RICE = 0;
  static final int BITMAP = 1;
  static final int ALL = 2;
  static final int ADAPTIVE = 3;
  static final int COLUMNS = 4;
  static final int VALUES_RAW = 0;
  static final int VALUES_DELTA = 1;
  static final int VALUES_ADAPTIVE = 2;
  static final int VALUES_SATURATING = 3;
  static final int TYPE_INT8 = 9;
  /** The longest row of a column code (a C applier keeps two bits per column). */
  static final long MAX_COLUMNS = 2048;
  static final int MAX_RICE_PARAMETER = 31;
  static final long MAX_RECORDS = 1L << 20;
  /** The body length is a 32-bit field: no patch is longer than this. */
  static final long MAX_PATCH_SIZE = HEADER_SIZE + 0xffffffffL + SIGNATURE_SIZE + CHECKSUM_SIZE;

  private Format() {}

  /** The elements record kind of a format version. */
  static int elementsKind(int version) {
    return version >= 4 ? KIND_COMPACT : KIND_ELEMENTS;
  }

  /** The smallest record of a version, which bounds the record count. */
  static int smallestRecord(int version) {
    return version >= 4 ? COMPACT_FIXED + 4 : WHOLE_FILE_HEADER;
  }

  /** Bytes per element of a TFLite TensorType, 0 for types a patch cannot carry. */
  static int elementSize(int type) {
    switch (type) {
      case 0: return 4; // float32
      case 2: return 4; // int32
      case 3: return 1; // uint8
      case 4: return 8; // int64
      case 7: return 2; // int16
      case 9: return 1; // int8
      default: return 0;
    }
  }

  static String typeName(int type) {
    switch (type) {
      case 0: return "float32";
      case 2: return "int32";
      case 3: return "uint8";
      case 4: return "int64";
      case 7: return "int16";
      case 9: return "int8";
      default: return "type " + type;
    }
  }

  static int u8(byte[] b, int at) {
    return b[at] & 0xff;
  }

  static int u16(byte[] b, int at) {
    return (b[at] & 0xff) | (b[at + 1] & 0xff) << 8;
  }

  /** An unsigned 32-bit field, as a long. */
  static long u32(byte[] b, int at) {
    return (b[at] & 0xffL) | (b[at + 1] & 0xffL) << 8 | (b[at + 2] & 0xffL) << 16
        | (b[at + 3] & 0xffL) << 24;
  }

  /** Four bytes, most significant first (a range decoder's code). */
  static long u32be(byte[] b, int at) {
    return (b[at] & 0xffL) << 24 | (b[at + 1] & 0xffL) << 16 | (b[at + 2] & 0xffL) << 8
        | (b[at + 3] & 0xffL);
  }

  /** An unsigned 64-bit field; values of 2^63 and more come out negative. */
  static long u64(byte[] b, int at) {
    return u32(b, at) | u32(b, at + 4) << 32;
  }

  /** The 8 bytes a patch header names its signing key by: SHA-256(key)[:8]. */
  static byte[] keyId(byte[] publicKey) {
    return java.util.Arrays.copyOf(Digests.sha256().digest(publicKey), KEY_ID_SIZE);
  }

  static String hex(byte[] digest, int bytes) {
    StringBuilder out = new StringBuilder();
    for (int i = 0; i < bytes; i++) {
      out.append(String.format("%02x", digest[i] & 0xff));
    }
    return out.toString();
  }
}
