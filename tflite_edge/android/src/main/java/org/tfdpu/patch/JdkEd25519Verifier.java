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

  @Override
  public boolean verify(byte[] publicKey, byte[] message, int offset, int length,
      byte[] signature) throws GeneralSecurityException {
    // A malleable signature (S >= L) is invalid, not a platform failure: the
    // JDK throws for it, and the other appliers simply refuse it.
    if (signature.length != 64 || !PureEd25519Verifier.canonicalS(signature)) {
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
