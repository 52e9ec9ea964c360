package org.tfdpu.patch;

/** What a patch applies to and what it must produce (the 100-byte header). */
public final class Header {
  /** The round the result belongs to. */
  public final long round;
  /** Sizes of the base and the result, in bytes (unsigned 64-bit). */
  public final long baseSize;
  public final long resultSize;
  final byte[] baseSha256;
  final byte[] resultSha256;
  final long recordCount;
  final long bodyLength;
  final boolean signed;

  Header(byte[] patch) {
    round = Format.u32(patch, 8);
    baseSize = Format.u64(patch, 12);
    resultSize = Format.u64(patch, 20);
    baseSha256 = java.util.Arrays.copyOfRange(patch, 28, 60);
    resultSha256 = java.util.Arrays.copyOfRange(patch, 60, 92);
    recordCount = Format.u32(patch, 92);
    bodyLength = Format.u32(patch, 96);
    signed = (Format.u16(patch, 6) & Format.FLAG_SIGNED) != 0;
  }

  /** The result's SHA-256. */
  public byte[] resultSha256() {
    return resultSha256.clone();
  }

  int bodyEnd() {
    return (int) (Format.HEADER_SIZE + bodyLength);
  }
}
