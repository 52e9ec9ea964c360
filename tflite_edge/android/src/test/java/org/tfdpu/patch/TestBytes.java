package org.tfdpu.patch;

/** What the JUnit tests share: bytes from hex. */
final class TestBytes {
  private TestBytes() {}

  static byte[] hex(String text) {
    byte[] out = new byte[text.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }
}
