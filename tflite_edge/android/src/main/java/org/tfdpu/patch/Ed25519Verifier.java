package org.tfdpu.patch;

import java.security.GeneralSecurityException;

/**
 * Checks Ed25519 signatures. The default, {@link #platformOrPure()}, uses the
 * platform's "Ed25519" provider where there is one (the JDK from version 15;
 * on Android, from API 33 where the device's providers have it) and
 * {@link PureEd25519Verifier} elsewhere; an app may
 * plug in its own (Tink, BouncyCastle, a hardware keystore) through this
 * interface.
 */
public interface Ed25519Verifier {
  /** java.security's Ed25519 when the platform has it, else the plain-Java verifier. */
  static Ed25519Verifier platformOrPure() {
    try {
      java.security.KeyFactory.getInstance("Ed25519");
      java.security.Signature.getInstance("Ed25519");
      return new JdkEd25519Verifier();
    } catch (java.security.NoSuchAlgorithmException e) {
      return new PureEd25519Verifier();
    }
  }

  /**
   * Whether `signature` (64 bytes) is a valid signature of `message[offset,
   * offset + length)` under `publicKey` (32 raw bytes, already checked by
   * {@link PatchKey}).
   */
  boolean verify(byte[] publicKey, byte[] message, int offset, int length, byte[] signature)
      throws GeneralSecurityException;
}
