package org.tfdpu.patch;

/** One bit stream of a patch, least significant bit of each byte first. */
final class BitReader {
  private final byte[] data;
  private final long start;
  private final long bits;
  private long position;

  BitReader(byte[] data, long start, long bytes) {
    this.data = data;
    this.start = start;
    this.bits = 8 * bytes;
  }

  private static PatchException bad(String message) {
    return new PatchException(PatchException.Reason.RECORD, message);
  }

  int bit() throws PatchException {
    if (position >= bits) {
      throw bad("a code runs past the end of its stream");
    }
    int value = (data[(int) (start + (position >>> 3))] >> (int) (position & 7)) & 1;
    position++;
    return value;
  }

  /**
   * One Rice code with parameter k: (v >> k) ones, a zero, the k low bits of v.
   * The run of ones is refused as soon as it exceeds what a value below
   * `limit` allows, so a hostile run costs no more than its own bits.
   */
  long rice(int k, long limit) throws PatchException {
    long largest = (limit - 1) >>> k;
    long quotient = 0;
    while (bit() == 1) {
      if (++quotient > largest) {
        throw bad("a Rice-coded value is out of range");
      }
    }
    long remainder = 0;
    for (int j = 0; j < k; j++) {
      remainder |= (long) bit() << j;
    }
    long value = quotient << k | remainder;
    if (value >= limit) {
      throw bad("a Rice-coded value (" + value + ") is out of range");
    }
    return value;
  }

  /** The bits after the last code: zero, and under a byte for Rice streams. */
  void end(boolean rice) throws PatchException {
    if (rice && bits - position >= 8) {
      throw bad("a Rice stream has stray bits after its last code");
    }
    while (position < bits) {
      if (bit() != 0) {
        throw bad("a stream has stray bits after its last code");
      }
    }
  }
}
