/*
 * A mutation-based driver for dpu_fuzz.c where libFuzzer is not available
 * (gcc builds): starts from the seed files given, applies random byte flips,
 * overwrites, insertions, deletions and truncations with a seeded PRNG, and
 * runs each input through LLVMFuzzerTestOneInput under the sanitizers.
 *   dpu_fuzz_standalone ITERATIONS SEED FILE...
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
extern unsigned long dpu_fuzz_written;

#define MAX_INPUT (1u << 16)
#define MAX_SEEDS 256

static uint64_t state;

static uint32_t next(void) { /* xorshift64* */
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return (uint32_t)((state * 2685821657736338717ull) >> 32);
}

int main(int argc, char **argv) {
  static uint8_t seeds[MAX_SEEDS][MAX_INPUT];
  static size_t lengths[MAX_SEEDS];
  static uint8_t input[MAX_INPUT];
  unsigned long iterations, i;
  int count = 0, a;
  if (argc < 4) {
    fprintf(stderr, "usage: dpu_fuzz_standalone ITERATIONS SEED FILE...\n");
    return 2;
  }
  iterations = strtoul(argv[1], NULL, 10);
  state = strtoull(argv[2], NULL, 10) | 1u;
  for (a = 3; a < argc && count < MAX_SEEDS; a++) {
    FILE *f = fopen(argv[a], "rb");
    if (!f) continue;
    lengths[count] = fread(seeds[count], 1, MAX_INPUT, f);
    fclose(f);
    if (lengths[count] > 0) count++;
  }
  if (count == 0) {
    fprintf(stderr, "no seed inputs\n");
    return 2;
  }
  for (i = 0; i < iterations; i++) {
    int s = (int)(next() % (uint32_t)count);
    size_t size = lengths[s];
    unsigned m, mutations = 1 + next() % 8;
    memcpy(input, seeds[s], size);
    for (m = 0; m < mutations && size > 1; m++) {
      size_t at = 1 + next() % (uint32_t)(size - 1); /* keep the mode byte */
      switch (next() % 6) {
        case 0: input[at] ^= (uint8_t)(1u << (next() % 8)); break;
        case 1: input[at] = (uint8_t)next(); break;
        case 2: size = at; break;                               /* truncate */
        case 3: {                                               /* delete */
          size_t n = 1 + next() % 16;
          if (at + n > size) n = size - at;
          memmove(input + at, input + at + n, size - at - n);
          size -= n;
          break;
        }
        case 4: {                                               /* insert */
          size_t n = 1 + next() % 16, j;
          if (size + n > MAX_INPUT) break;
          memmove(input + at + n, input + at, size - at);
          for (j = 0; j < n; j++) input[at + j] = (uint8_t)next();
          size += n;
          break;
        }
        default: {                                              /* interesting values */
          static const uint8_t values[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x1f, 0x20};
          input[at] = values[next() % sizeof(values)];
          break;
        }
      }
    }
    LLVMFuzzerTestOneInput(input, size);
  }
  printf("%lu inputs, 0 crashes, %lu mutated bodies written whole and accepted when resealed\n",
         iterations, dpu_fuzz_written);
  return 0;
}
