package org.tfdpu.patch;

import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.X509EncodedKeySpec;

/** Ed25519 through java.security ("Ed25519": the JDK from version 15, recent Android). */
public final class JdkEd25519Verifier implements Ed25519Verifier {
  // The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
  private static final byte[] PREFIX = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
      0x03, 0x21, 0x00};

  // L, the order of the base point, little-endian: RFC 8032 requires S < L.
  private static final java.math.BigInteger ORDER = java.math.BigInteger.ONE.shiftLeft(252).add(
      new java.math.BigInteger("27742317777372353535851937790883648493"));

  /** Whether S (the signature's second half) is below L, as RFC 8032 requires. */
  static boolean canonicalS(byte[] signature) {
    byte[] bigEndian = new byte[33];
    for (int i = 0; i < 32; i++) {
      bigEndian[32 - i] = signature[32 + i];
    }
    return new java.math.BigInteger(bigEndian).compareTo(ORDER) < 0;
  }

  @Override
  public boolean verify(byte[] publicKey, byte[] message, int offset, int length,
      byte[] signature) throws GeneralSecurityException {
    // A malleable signature (S >= L) is invalid, not a platform failure: the
    // JDK throws for it, and the other appliers simply refuse it.
    if (signature.length != 64 || !canonicalS(signature)) {
      return false;
    }
    byte[] encoded = new byte[PREFIX.length + publicKey.length];
    System.arraycopy(PREFIX, 0, encoded, 0, PREFIX.length);
    System.arraycopy(publicKey, 0, encoded, PREFIX.length, publicKey.length);
    PublicKey key = KeyFactory.getInstance("Ed25519").generatePublic(
        new X509EncodedKeySpec(encoded));
    Signature verifier = Signature.getInstance("Ed25519");
    verifier.initVerify(key);
    verifier.update(message, offset, length);
    return verifier.verify(signature);
  }
}
