package org.tfdpu.patch;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;

/**
 * The checks that need neither the patch's records nor the base: size, magic,
 * version, flags, the trailing checksum and the body's hash. A patch file is
 * read once, as a stream: its header first, whose declared size must be the
 * file's and within what the device reads for its model, then the rest into
 * one array of that size, hashed on the way.
 */
final class Envelope {
  private Envelope() {}

  private static PatchException format(String message) {
    return new PatchException(PatchException.Reason.FORMAT, message);
  }

  /** The header's own checks (the first HEADER_SIZE bytes of `patch`). */
  static Header header(byte[] patch, long actualSize) throws PatchException {
    if (actualSize < Format.HEADER_SIZE + Format.CHECKSUM_SIZE) {
      throw format("patch is truncated (" + actualSize + " bytes; a patch has at least "
          + (Format.HEADER_SIZE + Format.CHECKSUM_SIZE) + ")");
    }
    if (patch[0] != 'D' || patch[1] != 'P' || patch[2] != 'U' || patch[3] != 'P') {
      throw format("not a DPU patch (bad magic)");
    }
    int version = Format.u16(patch, 4);
    if (version < Format.OLDEST_VERSION || version > Format.VERSION) {
      throw format("patch format version " + version + " is not supported (this applier "
          + "reads versions " + Format.OLDEST_VERSION + " to " + Format.VERSION + ")");
    }
    int flags = Format.u16(patch, 6);
    if ((flags & ~Format.FLAG_SIGNED) != 0) {
      throw format("unknown patch flags 0x" + Integer.toHexString(flags));
    }
    Header header = new Header(patch);
    if (!header.signed) {
      for (byte b : header.keyId) {
        if (b != 0) {
          throw format("an unsigned patch names a signing key");
        }
      }
    }
    // Each record takes at least its version's smallest record header.
    if (header.recordCount > Format.MAX_RECORDS
        || header.recordCount * Format.smallestRecord(version) > header.bodyLength) {
      throw format("patch announces " + header.recordCount + " records in a "
          + header.bodyLength + "-byte body");
    }
    if (actualSize != header.size()) {
      throw format("patch is " + actualSize + " bytes but its header announces "
          + header.size() + " (truncated or extended)");
    }
    return header;
  }

  /**
   * The largest patch of this header worth reading for a `baseSize`-byte model:
   * an element patch rewrites at most every element (a bitmap and raw values
   * plus framing), a whole file holds its declared result.
   */
  static void checkLimit(Header header, long baseSize, long deviceLimit) throws PatchException {
    if (Long.compareUnsigned(header.resultSize, deviceLimit) > 0) {
      throw format("patch (" + header.size() + " bytes, for a "
          + Long.toUnsignedString(header.resultSize) + "-byte result) is larger than this "
          + "device accepts (" + deviceLimit + " bytes)");
    }
    long elements = baseSize * 9 / 8 + baseSize + 36 * header.recordCount;
    long whole = Format.WHOLE_FILE_HEADER + header.resultSize;
    long limit = header.bodyStart() + Format.ROTATION_HEADER + Math.max(elements, whole)
        + Format.CHECKSUM_SIZE;
    if (header.size() > limit) {
      throw format("patch is " + header.size() + " bytes, more than any update of this "
          + baseSize + "-byte model can be");
    }
  }

  /** The trailer is the checksum of the rest, and the body hashes as the header says. */
  static void checkHashes(Header header, byte[] content, byte[] trailer, byte[] body)
      throws PatchException {
    if (!Digests.equal(content, trailer)) {
      throw new PatchException(PatchException.Reason.CHECKSUM,
          "patch checksum mismatch (corrupted in transit)");
    }
    if (!Digests.equal(body, header.bodySha256)) {
      throw new PatchException(PatchException.Reason.CHECKSUM,
          "patch body does not match the SHA-256 in its header");
    }
  }

  /** Checks a patch held in memory. */
  static Header open(byte[] patch) throws PatchException {
    Header header = header(patch.length >= Format.HEADER_SIZE ? patch
        : java.util.Arrays.copyOf(patch, Format.HEADER_SIZE), patch.length);
    MessageDigest content = Digests.sha256();
    content.update(patch, 0, patch.length - Format.CHECKSUM_SIZE);
    MessageDigest body = Digests.sha256();
    body.update(patch, header.bodyStart(), (int) header.bodyLength);
    checkHashes(header, content.digest(), java.util.Arrays.copyOfRange(patch,
        patch.length - Format.CHECKSUM_SIZE, patch.length), body.digest());
    return header;
  }

  /**
   * Reads a patch file once: the header, then (its size bounded by `baseSize`
   * and `deviceLimit`) the rest, hashed as it arrives.
   */
  static byte[] read(Path path, long baseSize, long deviceLimit) throws PatchException {
    try (FileChannel in = FileChannel.open(path, StandardOpenOption.READ)) {
      long size = in.size();
      byte[] first = new byte[Format.HEADER_SIZE];
      int got = readFully(in, ByteBuffer.wrap(first), 0);
      Header header = header(first, got < Format.HEADER_SIZE ? got : size);
      checkLimit(header, baseSize, deviceLimit);
      byte[] patch = new byte[(int) header.size()];
      System.arraycopy(first, 0, patch, 0, Format.HEADER_SIZE);
      MessageDigest content = Digests.sha256();
      MessageDigest body = Digests.sha256();
      content.update(first);
      int end = patch.length - Format.CHECKSUM_SIZE;
      for (int at = Format.HEADER_SIZE; at < patch.length;) {
        int length = Math.min(1 << 16, patch.length - at);
        if (readFully(in, ByteBuffer.wrap(patch, at, length), at) < length) {
          throw format("patch " + path + " shrank while it was read");
        }
        int hashed = Math.max(0, Math.min(end, at + length) - at);
        content.update(patch, at, hashed);
        int bodyFrom = Math.max(at, header.bodyStart());
        if (bodyFrom < at + hashed) {
          body.update(patch, bodyFrom, at + hashed - bodyFrom);
        }
        at += length;
      }
      if (in.read(ByteBuffer.allocate(1), patch.length) > 0) {
        throw format("patch " + path + " grew while it was read");
      }
      checkHashes(header, content.digest(), java.util.Arrays.copyOfRange(patch, end,
          patch.length), body.digest());
      return patch;
    } catch (NoSuchFileException e) {
      throw new PatchException(PatchException.Reason.IO,
          "cannot read patch " + path + ": No such file or directory");
    } catch (IOException e) {
      throw new PatchException(PatchException.Reason.IO,
          "cannot read patch " + path + ": " + e.getMessage());
    }
  }

  private static int readFully(FileChannel in, ByteBuffer target, long position)
      throws IOException {
    int total = 0;
    while (target.hasRemaining()) {
      int got = in.read(target, position + total);
      if (got < 0) {
        break;
      }
      total += got;
    }
    return total;
  }
}
