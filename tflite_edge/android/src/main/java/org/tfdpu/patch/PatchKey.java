package org.tfdpu.patch;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * An Ed25519 public key, checked when it is loaded: 32 bytes, the canonical
 * encoding of a point on the curve, and not one of the eight points of small
 * order. With the identity point as key, the signature R = identity, S = 0
 * verifies for every message; signature libraries accept it.
 */
public final class PatchKey {
  private static final BigInteger P = BigInteger.ONE.shiftLeft(255).subtract(BigInteger.valueOf(19));
  private static final BigInteger D = BigInteger.valueOf(-121665)
      .multiply(BigInteger.valueOf(121666).modInverse(P)).mod(P);
  private static final BigInteger SQRT_MINUS_ONE =
      BigInteger.valueOf(2).modPow(P.subtract(BigInteger.ONE).shiftRight(2), P);

  private final byte[] raw;

  private PatchKey(byte[] raw) {
    this.raw = raw.clone();
  }

  byte[] raw() {
    return raw.clone();
  }

  /** A key from its 32 raw bytes. */
  public static PatchKey of(byte[] raw) throws PatchException {
    if (raw.length != 32) {
      throw new PatchException(PatchException.Reason.KEY,
          "an Ed25519 public key is 32 bytes, not " + raw.length);
    }
    BigInteger[] point = decode(raw);
    if (point == null) {
      throw new PatchException(PatchException.Reason.KEY,
          "the public key is not a valid Ed25519 point");
    }
    BigInteger[] multiple = point;
    for (int i = 0; i < 3; i++) {
      multiple = add(multiple, multiple);
    }
    if (multiple[0].signum() == 0 && multiple[1].equals(BigInteger.ONE)) {
      throw new PatchException(PatchException.Reason.KEY, "the public key is a point of small "
          + "order (a weak key that accepts forged signatures)");
    }
    return new PatchKey(raw);
  }

  /** A key from a file of exactly 32 raw bytes (what `keygen` writes). */
  public static PatchKey load(Path path) throws PatchException {
    byte[] raw;
    try {
      if (Files.size(path) != 32) {
        throw new PatchException(PatchException.Reason.KEY,
            path + " is not a raw 32-byte Ed25519 public key");
      }
      raw = Files.readAllBytes(path);
    } catch (IOException e) {
      throw new PatchException(PatchException.Reason.IO,
          "cannot read public key " + path + ": " + e.getMessage());
    }
    try {
      return of(raw);
    } catch (PatchException e) {
      throw new PatchException(e.reason(), path + ": " + e.getMessage());
    }
  }

  /** RFC 8032, 5.1.3, with the canonical checks; null when no point has this encoding. */
  private static BigInteger[] decode(byte[] raw) {
    byte[] bigEndian = new byte[33];
    for (int i = 0; i < 32; i++) {
      bigEndian[32 - i] = raw[i];
    }
    int sign = (raw[31] >> 7) & 1;
    bigEndian[1] &= 0x7f;
    BigInteger y = new BigInteger(bigEndian);
    if (y.compareTo(P) >= 0) {
      return null;
    }
    BigInteger u = y.multiply(y).subtract(BigInteger.ONE).mod(P);
    BigInteger v = D.multiply(y).multiply(y).add(BigInteger.ONE).mod(P);
    BigInteger x = u.multiply(v.modPow(BigInteger.valueOf(3), P))
        .multiply(u.multiply(v.modPow(BigInteger.valueOf(7), P))
            .modPow(P.subtract(BigInteger.valueOf(5)).shiftRight(3), P)).mod(P);
    BigInteger vx2 = v.multiply(x).multiply(x).mod(P);
    if (vx2.equals(u.negate().mod(P))) {
      x = x.multiply(SQRT_MINUS_ONE).mod(P);
    } else if (!vx2.equals(u)) {
      return null;
    }
    if (x.signum() == 0 && sign == 1) {
      return null;
    }
    if (x.testBit(0) != (sign == 1)) {
      x = P.subtract(x);
    }
    return new BigInteger[] {x, y};
  }

  private static BigInteger[] add(BigInteger[] a, BigInteger[] b) {
    BigInteger t = D.multiply(a[0]).multiply(b[0]).multiply(a[1]).multiply(b[1]).mod(P);
    BigInteger x = a[0].multiply(b[1]).add(a[1].multiply(b[0]))
        .multiply(BigInteger.ONE.add(t).modInverse(P)).mod(P);
    BigInteger y = a[1].multiply(b[1]).add(a[0].multiply(b[0]))
        .multiply(BigInteger.ONE.subtract(t).mod(P).modInverse(P)).mod(P);
    return new BigInteger[] {x, y};
  }
}
