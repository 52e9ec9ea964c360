package org.tfdpu.patch;

/** What a patch applies to, what it must produce, and who released it when (the header). */
public final class Header {
  /** The round the result belongs to. */
  public final long round;
  /** Sizes of the base and the result, in bytes (unsigned 64-bit). */
  public final long baseSize;
  public final long resultSize;
  /** Seconds since 1970 when the server released it; and after which it is refused (0: never). */
  public final long releaseTime;
  public final long expires;
  final byte[] baseSha256;
  final byte[] resultSha256;
  final byte[] bodySha256;
  final byte[] keyId;
  final int version;
  final long recordCount;
  final long bodyLength;
  final boolean signed;
  /** The header's own bytes: what the signature covers. */
  final byte[] bytes;
  /** Set by the applier: the signature was checked with the device's key. */
  boolean verified;

  Header(byte[] patch) {
    bytes = java.util.Arrays.copyOf(patch, Format.HEADER_SIZE);
    version = Format.u16(patch, 4);
    round = Format.u32(patch, 8);
    baseSize = Format.u64(patch, 12);
    resultSize = Format.u64(patch, 20);
    baseSha256 = java.util.Arrays.copyOfRange(patch, 28, 60);
    resultSha256 = java.util.Arrays.copyOfRange(patch, 60, 92);
    recordCount = Format.u32(patch, 92);
    bodyLength = Format.u32(patch, 96);
    releaseTime = Format.u64(patch, 100);
    expires = Format.u64(patch, 108);
    keyId = java.util.Arrays.copyOfRange(patch, 116, 124);
    bodySha256 = java.util.Arrays.copyOfRange(patch, 124, 156);
    signed = (Format.u16(patch, 6) & Format.FLAG_SIGNED) != 0;
  }

  /** The result's SHA-256. */
  public byte[] resultSha256() {
    return resultSha256.clone();
  }

  /** Whether the applier checked its signature (false: applied unsigned, by opt-in). */
  public boolean verified() {
    return verified;
  }

  /** The id of the key that signed it (zero when unsigned). */
  public byte[] keyId() {
    return keyId.clone();
  }

  int bodyStart() {
    return Format.HEADER_SIZE + (signed ? Format.SIGNATURE_SIZE : 0);
  }

  int bodyEnd() {
    return (int) (bodyStart() + bodyLength);
  }

  /** The patch's size as declared (fits a long: the fields are 32-bit). */
  long size() {
    return bodyStart() + bodyLength + Format.CHECKSUM_SIZE;
  }

  /** The result is the base: the patch changes no byte of the model (a key rotation). */
  boolean keepsModel() {
    return baseSize == resultSize && Digests.equal(baseSha256, resultSha256);
  }
}
