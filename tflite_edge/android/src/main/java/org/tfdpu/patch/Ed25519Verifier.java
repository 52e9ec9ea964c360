package org.tfdpu.patch;

import java.security.GeneralSecurityException;

/**
 * Checks Ed25519 signatures. The default, {@link JdkEd25519Verifier}, uses the
 * platform's "Ed25519" provider (the JDK has it from version 15; on Android it
 * depends on the release): an app without one plugs in its own (Tink,
 * BouncyCastle, a hardware keystore) through this interface.
 */
public interface Ed25519Verifier {
  /**
   * Whether `signature` (64 bytes) is a valid signature of `message[offset,
   * offset + length)` under `publicKey` (32 raw bytes, already checked by
   * {@link PatchKey}).
   */
  boolean verify(byte[] publicKey, byte[] message, int offset, int length, byte[] signature)
      throws GeneralSecurityException;
}
