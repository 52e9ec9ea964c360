package org.tfdpu.patch;

import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

final class Digests {
  private Digests() {}

  /** SHA-256, which every Java platform provides. */
  static MessageDigest sha256() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("this platform has no SHA-256", e);
    }
  }

  static boolean equal(byte[] a, byte[] b) {
    return MessageDigest.isEqual(a, b);
  }
}
