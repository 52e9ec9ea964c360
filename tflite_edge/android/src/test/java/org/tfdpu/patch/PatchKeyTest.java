package org.tfdpu.patch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

class PatchKeyTest {
  @Test
  void refusesTheIdentityAndTheOtherPointsOfSmallOrder() {
    String[] keys = {"0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"};
    for (String key : keys) {
      PatchException e = assertThrows(PatchException.class,
          () -> PatchKey.of(TestBytes.hex(key)), key);
      assertEquals(PatchException.Reason.KEY, e.reason());
    }
  }

  @Test
  void acceptsARealKey() throws PatchException {
    // RFC 8032, section 7.1, test 1
    PatchKey.of(TestBytes.hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"));
  }

  @Test
  void refusesNonCanonicalAndOffCurveEncodings() {
    String[] keys = {"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0200000000000000000000000000000000000000000000000000000000000000"};
    for (String key : keys) {
      assertThrows(PatchException.class, () -> PatchKey.of(TestBytes.hex(key)), key);
    }
    assertThrows(PatchException.class, () -> PatchKey.of(new byte[31]));
  }
}
