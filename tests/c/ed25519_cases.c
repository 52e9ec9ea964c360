/* Reads "KEY MESSAGE SIGNATURE" lines (hex) on stdin; prints 1 when
 * dpu_ed25519_verify accepts the signature, 0 when not (tests/test_ed25519_c.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpu_ed25519.h"

static int nibble(int c) {
  return c <= '9' ? c - '0' : c - 'a' + 10;
}

static size_t hex(const char *text, uint8_t *out, size_t limit) {
  size_t n = 0;
  while (text[0] && text[0] != ' ' && text[0] != '\n' && n < limit) {
    out[n++] = (uint8_t)(nibble(text[0]) * 16 + nibble(text[1]));
    text += 2;
  }
  return n;
}

int main(void) {
  static char line[1024];
  uint8_t key[32], message[256], signature[64];
  while (fgets(line, sizeof(line), stdin)) {
    char *second = strchr(line, ' ');
    char *third = second ? strchr(second + 1, ' ') : NULL;
    size_t length;
    if (!third) return 2;
    hex(line, key, 32);
    length = hex(second + 1, message, sizeof(message));
    hex(third + 1, signature, 64);
    putchar(dpu_ed25519_verify(key, message, (uint32_t)length, signature) == 0 ? '1' : '0');
    putchar('\n');
  }
  return 0;
}
