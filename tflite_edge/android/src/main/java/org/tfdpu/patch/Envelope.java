package org.tfdpu.patch;

import java.security.MessageDigest;

/**
 * The checks that need neither the patch's body nor the base: size, magic,
 * version, trailing checksum, flags. Nothing of the body is decoded here.
 */
final class Envelope {
  private Envelope() {}

  static Header open(byte[] patch) throws PatchException {
    if (patch.length < Format.HEADER_SIZE + Format.CHECKSUM_SIZE) {
      throw new PatchException(PatchException.Reason.FORMAT, "patch is truncated ("
          + patch.length + " bytes; a patch has at least "
          + (Format.HEADER_SIZE + Format.CHECKSUM_SIZE) + ")");
    }
    if (patch[0] != 'D' || patch[1] != 'P' || patch[2] != 'U' || patch[3] != 'P') {
      throw new PatchException(PatchException.Reason.FORMAT, "not a DPU patch (bad magic)");
    }
    int version = Format.u16(patch, 4);
    if (version != Format.VERSION) {
      throw new PatchException(PatchException.Reason.FORMAT, "patch format version " + version
          + " is not supported (this applier reads version " + Format.VERSION + ")");
    }
    int flags = Format.u16(patch, 6);
    long body = Format.u32(patch, 96);
    long expected = Format.HEADER_SIZE + body
        + ((flags & Format.FLAG_SIGNED) != 0 ? Format.SIGNATURE_SIZE : 0) + Format.CHECKSUM_SIZE;
    if (patch.length != expected) {
      throw new PatchException(PatchException.Reason.FORMAT, "patch is " + patch.length
          + " bytes but its header announces " + expected + " (truncated or extended)");
    }
    MessageDigest sha = Digests.sha256();
    sha.update(patch, 0, patch.length - Format.CHECKSUM_SIZE);
    byte[] digest = sha.digest();
    for (int i = 0; i < Format.CHECKSUM_SIZE; i++) {
      if (digest[i] != patch[patch.length - Format.CHECKSUM_SIZE + i]) {
        throw new PatchException(PatchException.Reason.CHECKSUM,
            "patch checksum mismatch (corrupted in transit)");
      }
    }
    if ((flags & ~Format.FLAG_SIGNED) != 0) {
      throw new PatchException(PatchException.Reason.FORMAT,
          "unknown patch flags 0x" + Integer.toHexString(flags));
    }
    Header header = new Header(patch);
    // The smallest record is a 12-byte whole-file header.
    if (header.recordCount > Format.MAX_RECORDS
        || header.recordCount * Format.WHOLE_FILE_HEADER > header.bodyLength) {
      throw new PatchException(PatchException.Reason.FORMAT, "patch announces "
          + header.recordCount + " records in a " + header.bodyLength + "-byte body");
    }
    return header;
  }
}
