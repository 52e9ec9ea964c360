package org.tfdpu.patch;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {
  @Test
  void readsTheStateFile() {
    Map<?, ?> doc = (Map<?, ?>) Json.parse("{\"round\": 3, \"sha256\": \"ab\", "
        + "\"pending\": {\"round\": 4}}");
    assertEquals(BigInteger.valueOf(3), doc.get("round"));
    assertEquals("ab", doc.get("sha256"));
    assertTrue(doc.get("pending") instanceof Map);
  }

  @Test
  void keepsTypesApart() {
    // A round of `true` or `1.0` must not read as an integer round.
    assertEquals(Boolean.TRUE, ((Map<?, ?>) Json.parse("{\"round\": true}")).get("round"));
    assertTrue(((Map<?, ?>) Json.parse("{\"round\": 1.0}")).get("round") instanceof Double);
  }

  @Test
  void refusesMalformedText() {
    for (String text : new String[] {"", "{", "{\"round\": }", "{} x", "[1,]", "{\"a\" 1}",
        "nul", "\"\\q\""}) {
      assertThrows(IllegalArgumentException.class, () -> Json.parse(text), text);
    }
  }
}
