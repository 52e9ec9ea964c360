package org.tfdpu.patch;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import org.junit.jupiter.api.Test;

/** RFC 8032, 7.1, tests 1 and 3, on the plain-Java verifier (the full comparison with
 * OpenSSL is tests/test_ed25519_java.py). */
class PureEd25519VerifierTest {
  private static final byte[] KEY1 =
      TestBytes.hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  private static final byte[] SIG1 = TestBytes.hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e0652249"
      + "01555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  private static final byte[] KEY3 =
      TestBytes.hex("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025");
  private static final byte[] SIG3 = TestBytes.hex("6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5a"
      + "c3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a");

  private final PureEd25519Verifier verifier = new PureEd25519Verifier();

  @Test
  void acceptsTheRfcVectors() throws Exception {
    assertTrue(verifier.verify(KEY1, new byte[0], 0, 0, SIG1));
    byte[] message = {0, (byte) 0xaf, (byte) 0x82, 0};
    assertTrue(verifier.verify(KEY3, message, 1, 2, SIG3));   // an offset and a length
  }

  @Test
  void refusesAnyChangeAndAMalleableS() throws Exception {
    byte[] flipped = SIG1.clone();
    flipped[10] ^= 1;
    assertFalse(verifier.verify(KEY1, new byte[0], 0, 0, flipped));
    assertFalse(verifier.verify(KEY1, new byte[] {0}, 0, 1, SIG1));
    // S + L verifies the same equation; RFC 8032 requires S < L.
    byte[] bigEndian = new byte[33];
    for (int i = 0; i < 32; i++) {
      bigEndian[32 - i] = SIG1[32 + i];
    }
    BigInteger s = new BigInteger(bigEndian).add(BigInteger.ONE.shiftLeft(252).add(
        new BigInteger("27742317777372353535851937790883648493")));
    byte[] malleable = SIG1.clone();
    byte[] raw = s.toByteArray();
    for (int i = 0; i < 32; i++) {
      malleable[32 + i] = i < raw.length ? raw[raw.length - 1 - i] : 0;
    }
    assertFalse(verifier.verify(KEY1, new byte[0], 0, 0, malleable));
  }
}
