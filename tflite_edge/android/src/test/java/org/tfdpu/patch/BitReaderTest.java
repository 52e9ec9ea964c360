package org.tfdpu.patch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

class BitReaderTest {
  @Test
  void decodesRiceCodesLeastSignificantBitFirst() throws PatchException {
    // 5 with k = 1: quotient 2 (ones "11"), a zero, remainder 1 -> bits 1,1,0,1 -> 0b1011
    BitReader reader = new BitReader(new byte[] {0x0b}, 0, 1);
    assertEquals(5, reader.rice(1, 100));
    reader.end(true);
  }

  @Test
  void refusesALongRunOfOnesAsSoonAsItExceedsTheLimit() {
    byte[] ones = new byte[1 << 20];
    java.util.Arrays.fill(ones, (byte) 0xff);
    BitReader reader = new BitReader(ones, 0, ones.length);
    PatchException e = assertThrows(PatchException.class, () -> reader.rice(0, 48));
    assertEquals(PatchException.Reason.RECORD, e.reason());
  }

  @Test
  void refusesStrayBits() throws PatchException {
    BitReader reader = new BitReader(new byte[] {0x00, 0x01}, 0, 2);
    assertEquals(0, reader.rice(0, 10));
    assertThrows(PatchException.class, () -> reader.end(true));
  }
}
