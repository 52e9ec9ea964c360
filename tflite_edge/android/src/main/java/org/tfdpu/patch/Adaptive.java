package org.tfdpu.patch;

/**
 * Decoder of version 4's adaptive codes (PATCH_FORMAT.md, "Adaptive codes"):
 * a binary range decoder whose 12-bit probabilities learn as the record is
 * read, and the ladder code of a value (its class in unary, then the bits
 * below its leading one). Bit for bit what the Python writer encodes and the
 * C applier decodes.
 */
final class Adaptive {
  private static final int PROBABILITY_BITS = 12;
  private static final int ONE = 1 << PROBABILITY_BITS;
  static final int HALF = ONE / 2;
  private static final int ADAPT_SHIFT = 5;
  private static final long TOP = 1L << 24;
  private static final long MASK32 = 0xffffffffL;
  private static final int TREE_NODES = 7;
  private static final int TREES = 16;

  /** The learned probabilities of one ladder code. */
  static final class Ladder {
    final int[] unary = new int[33];
    final int[][] tree = new int[TREES][TREE_NODES];

    Ladder() {
      java.util.Arrays.fill(unary, HALF);
      for (int[] t : tree) {
        java.util.Arrays.fill(t, HALF);
      }
    }
  }

  private final byte[] data;
  private final int end;
  private int at;
  private long range;
  private long code;

  /** Opens the stream of `length` bytes at `start`: a zero byte, then the code. */
  Adaptive(byte[] data, int start, long length) throws PatchException {
    if (length < 5 || data[start] != 0) {
      throw bad("an adaptive stream is shorter than 5 bytes or does not start with a zero byte");
    }
    this.data = data;
    this.end = (int) (start + length);
    this.code = Format.u32be(data, start + 1);
    this.range = MASK32;
    this.at = start + 5;
    if (code >= range) {
      throw bad("an adaptive stream starts outside its range");
    }
  }

  private static PatchException bad(String message) {
    return new PatchException(PatchException.Reason.RECORD, message);
  }

  private void normalize() throws PatchException {
    while (range < TOP) {
      if (at >= end) {
        throw bad("an adaptive stream ends before its last code");
      }
      range = (range << 8) & MASK32;
      code = ((code << 8) | (data[at++] & 0xffL)) & MASK32;
    }
  }

  /** One bit at probabilities[index] (of a zero), which then adapts. */
  int bit(int[] probabilities, int index) throws PatchException {
    int p = probabilities[index];
    long bound = (range >>> PROBABILITY_BITS) * p;
    int bit;
    if (code < bound) {
      range = bound;
      probabilities[index] = p + ((ONE - p) >>> ADAPT_SHIFT);
      bit = 0;
    } else {
      code -= bound;
      range -= bound;
      probabilities[index] = p - (p >>> ADAPT_SHIFT);
      bit = 1;
    }
    normalize();
    return bit;
  }

  private int fixed() throws PatchException {
    long bound = (range >>> PROBABILITY_BITS) * HALF;
    int bit;
    if (code < bound) {
      range = bound;
      bit = 0;
    } else {
      code -= bound;
      range -= bound;
      bit = 1;
    }
    normalize();
    return bit;
  }

  /** A value below `limit` (at most 2^32); a longer class or a larger value is refused. */
  long ladder(Ladder model, long limit) throws PatchException {
    int classes = 64 - Long.numberOfLeadingZeros(limit);
    int n = 1;
    while (bit(model.unary, n - 1) == 1) {
      n++;
      if (n > classes) {
        throw bad("an adaptive code is longer than its limit allows");
      }
    }
    int[] tree = model.tree[Math.min(n, TREES) - 1];
    int node = 1;
    long rest = 0;
    for (int j = 1; j < n; j++) {
      int bit;
      if (node <= TREE_NODES) {
        bit = bit(tree, node - 1);
        node = 2 * node + bit;
      } else {
        bit = fixed();
      }
      rest = 2 * rest + bit;
    }
    long value = (1L << (n - 1)) + rest - 1;
    if (value >= limit) {
      throw bad("an adaptive code decodes " + value + ", not below " + limit);
    }
    return value;
  }

  /** The stream must end exactly where its codes do. */
  void finish() throws PatchException {
    if (at != end) {
      throw bad("an adaptive stream has " + (end - at) + " bytes after its last code");
    }
  }
}
