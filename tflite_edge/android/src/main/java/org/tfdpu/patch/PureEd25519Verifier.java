package org.tfdpu.patch;

import java.math.BigInteger;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;

/**
 * Ed25519 verification (RFC 8032, 5.1.7) in plain Java, for platforms whose
 * java.security has no "Ed25519" (older Android releases, JDKs before 15).
 *
 * <p>It accepts exactly what OpenSSL's verifier accepts (and so Python's
 * {@code cryptography}): S must be below L; the key is decoded as OpenSSL
 * decodes it (its y taken modulo p, x = 0 with either sign); the check is the
 * cofactorless [S]B - [h]A, whose encoding must equal R byte for byte. The
 * stricter rules for keys (canonical, not of small order) are
 * {@link PatchKey}'s, applied before a key is ever used. Verification takes a
 * few milliseconds: a patch is checked once.
 */
public final class PureEd25519Verifier implements Ed25519Verifier {
  private static final BigInteger P = BigInteger.ONE.shiftLeft(255).subtract(BigInteger.valueOf(19));
  static final BigInteger L = BigInteger.ONE.shiftLeft(252).add(
      new BigInteger("27742317777372353535851937790883648493"));
  private static final BigInteger D = BigInteger.valueOf(-121665)
      .multiply(BigInteger.valueOf(121666).modInverse(P)).mod(P);
  private static final BigInteger D2 = D.shiftLeft(1).mod(P);
  private static final BigInteger SQRT_MINUS_ONE =
      BigInteger.valueOf(2).modPow(P.subtract(BigInteger.ONE).shiftRight(2), P);
  private static final Point BASE;

  static {
    BigInteger y = BigInteger.valueOf(4).multiply(BigInteger.valueOf(5).modInverse(P)).mod(P);
    BASE = decode(littleEndian(y), false);
  }

  /** A point in extended coordinates: x = X/Z, y = Y/Z, x y = T/Z. */
  private static final class Point {
    final BigInteger x;
    final BigInteger y;
    final BigInteger z;
    final BigInteger t;

    Point(BigInteger x, BigInteger y, BigInteger z, BigInteger t) {
      this.x = x;
      this.y = y;
      this.z = z;
      this.t = t;
    }

    static Point identity() {
      return new Point(BigInteger.ZERO, BigInteger.ONE, BigInteger.ONE, BigInteger.ZERO);
    }

    Point add(Point q) {
      BigInteger a = y.subtract(x).multiply(q.y.subtract(q.x)).mod(P);
      BigInteger b = y.add(x).multiply(q.y.add(q.x)).mod(P);
      BigInteger c = t.multiply(D2).multiply(q.t).mod(P);
      BigInteger d = z.multiply(q.z).shiftLeft(1).mod(P);
      BigInteger e = b.subtract(a);
      BigInteger f = d.subtract(c);
      BigInteger g = d.add(c);
      BigInteger h = b.add(a);
      return new Point(e.multiply(f).mod(P), g.multiply(h).mod(P), f.multiply(g).mod(P),
          e.multiply(h).mod(P));
    }

    Point twice() {
      BigInteger a = x.multiply(x).mod(P);
      BigInteger b = y.multiply(y).mod(P);
      BigInteger c = z.multiply(z).shiftLeft(1).mod(P);
      BigInteger h = a.add(b);
      BigInteger sum = x.add(y);
      BigInteger e = h.subtract(sum.multiply(sum)).mod(P);
      BigInteger g = a.subtract(b);
      BigInteger f = c.add(g);
      return new Point(e.multiply(f).mod(P), g.multiply(h).mod(P), f.multiply(g).mod(P),
          e.multiply(h).mod(P));
    }

    Point negate() {
      return new Point(P.subtract(x).mod(P), y, z, P.subtract(t).mod(P));
    }

    byte[] encode() {
      BigInteger inverse = z.modInverse(P);
      byte[] out = littleEndian(y.multiply(inverse).mod(P));
      if (x.multiply(inverse).mod(P).testBit(0)) {
        out[31] |= (byte) 0x80;
      }
      return out;
    }
  }

  private static byte[] littleEndian(BigInteger value) {
    byte[] out = new byte[32];
    byte[] big = value.toByteArray();
    for (int i = 0; i < big.length && i < 32; i++) {
      out[i] = big[big.length - 1 - i];
    }
    return out;
  }

  private static BigInteger number(byte[] raw, int offset, int length) {
    byte[] big = new byte[length + 1];
    for (int i = 0; i < length; i++) {
      big[length - i] = raw[offset + i];
    }
    return new BigInteger(big);
  }

  /**
   * RFC 8032, 5.1.3; with {@code strict} false, as OpenSSL decodes a public
   * key: y is reduced modulo p and x = 0 takes either sign. Null when no
   * point has this y.
   */
  private static Point decode(byte[] raw, boolean strict) {
    byte[] copy = raw.clone();
    int sign = (copy[31] >> 7) & 1;
    copy[31] &= 0x7f;
    BigInteger y = number(copy, 0, 32);
    if (strict && y.compareTo(P) >= 0) {
      return null;
    }
    y = y.mod(P);
    BigInteger yy = y.multiply(y).mod(P);
    BigInteger u = yy.subtract(BigInteger.ONE).mod(P);
    BigInteger v = D.multiply(yy).add(BigInteger.ONE).mod(P);
    BigInteger v3 = v.multiply(v).multiply(v).mod(P);
    BigInteger x = u.multiply(v3).multiply(u.multiply(v3).multiply(v3).multiply(v).mod(P)
        .modPow(P.subtract(BigInteger.valueOf(5)).shiftRight(3), P)).mod(P);
    BigInteger vxx = v.multiply(x).multiply(x).mod(P);
    if (vxx.equals(P.subtract(u).mod(P))) {
      x = x.multiply(SQRT_MINUS_ONE).mod(P);
    } else if (!vxx.equals(u)) {
      return null;
    }
    if (strict && x.signum() == 0 && sign == 1) {
      return null;
    }
    if (x.testBit(0) != (sign == 1)) {
      x = P.subtract(x).mod(P);
    }
    return new Point(x, y, BigInteger.ONE, x.multiply(y).mod(P));
  }

  /** Whether `raw` is the canonical encoding of a curve point (RFC 8032, 5.1.3). */
  static boolean canonicalPoint(byte[] raw) {
    return decode(raw, true) != null;
  }

  /** Whether the point `raw` encodes (canonical) has small order: 8P is the identity. */
  static boolean smallOrder(byte[] raw) {
    Point eight = decode(raw, true).twice().twice().twice();
    return eight.x.signum() == 0 && eight.y.equals(eight.z);
  }

  /** Whether S (the signature's second half, little-endian) is below L, as RFC 8032 requires. */
  static boolean canonicalS(byte[] signature) {
    return number(signature, 32, 32).compareTo(L) < 0;
  }

  /** [a]B + [b]Q, both scalars below 2^256, in one pass over their bits (Straus). */
  private static Point doubleMultiply(BigInteger a, BigInteger b, Point q) {
    Point both = BASE.add(q);
    Point r = Point.identity();
    for (int i = Math.max(a.bitLength(), b.bitLength()) - 1; i >= 0; i--) {
      r = r.twice();
      boolean ai = a.testBit(i);
      boolean bi = b.testBit(i);
      if (ai && bi) {
        r = r.add(both);
      } else if (ai) {
        r = r.add(BASE);
      } else if (bi) {
        r = r.add(q);
      }
    }
    return r;
  }

  @Override
  public boolean verify(byte[] publicKey, byte[] message, int offset, int length,
      byte[] signature) throws GeneralSecurityException {
    if (publicKey.length != 32 || signature.length != 64) {
      return false;
    }
    if (!canonicalS(signature)) {
      return false;
    }
    Point a = decode(publicKey, false);
    if (a == null) {
      return false;
    }
    MessageDigest sha512 = MessageDigest.getInstance("SHA-512");
    sha512.update(signature, 0, 32);
    sha512.update(publicKey);
    sha512.update(message, offset, length);
    BigInteger h = number(sha512.digest(), 0, 64).mod(L);
    byte[] expected = doubleMultiply(number(signature, 32, 32), h, a.negate()).encode();
    return MessageDigest.isEqual(expected, java.util.Arrays.copyOfRange(signature, 0, 32));
  }
}
