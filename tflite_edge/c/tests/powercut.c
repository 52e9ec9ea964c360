/*
 * Power-loss test of the in-place applier:
 *   dpu_powercut BASE PATCH TARGET
 * For every n, applies the patch in place with the power cut at the n-th write
 * (model or journal; the write in progress is torn: only its first half lands),
 * then "reboots" and calls dpu_apply_in_place again. The model must end up
 * byte-identical to TARGET every time, and be byte-identical to BASE when the
 * cut came before the first model write. The journal starts erased (0xff).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"

static unsigned char *patch, *model, journal[DPU_JOURNAL_SIZE];
static long patch_size, model_size;
static long writes_left; /* < 0: no cut */
static int model_written;

static unsigned char *load(const char *path, long *size) {
  FILE *f = fopen(path, "rb");
  unsigned char *data;
  if (!f || fseek(f, 0, SEEK_END) != 0) exit(2);
  *size = ftell(f);
  rewind(f);
  data = malloc((size_t)*size + 1);
  if (!data || fread(data, 1, (size_t)*size, f) != (size_t)*size) exit(2);
  fclose(f);
  return data;
}

/* Counts a write; at the cut, stores only the first half and fails. */
static int cut(unsigned char *dst, const uint8_t *buf, uint32_t len) {
  if (writes_left == 0) {
    memcpy(dst, buf, len / 2);
    writes_left = -2; /* powered off: every later call fails */
    return -1;
  }
  if (writes_left == -2) return -1;
  if (writes_left > 0) writes_left--;
  memcpy(dst, buf, len);
  return 0;
}

static int read_patch(void *c, uint32_t o, uint8_t *b, uint32_t n) {
  (void)c;
  if ((long)o + n > patch_size) return -1;
  memcpy(b, patch + o, n);
  return 0;
}

static int read_model(void *c, uint32_t o, uint8_t *b, uint32_t n) {
  (void)c;
  if (writes_left == -2 || (long)o + n > model_size) return -1;
  memcpy(b, model + o, n);
  return 0;
}

static int write_model(void *c, uint32_t o, const uint8_t *b, uint32_t n) {
  (void)c;
  if ((long)o + n > model_size) return -1;
  if (writes_left != -2) model_written = 1;
  return cut(model + o, b, n);
}

static int read_journal(void *c, uint32_t o, uint8_t *b, uint32_t n) {
  (void)c;
  if (writes_left == -2 || o + n > DPU_JOURNAL_SIZE) return -1;
  memcpy(b, journal + o, n);
  return 0;
}

static int write_journal(void *c, uint32_t o, const uint8_t *b, uint32_t n) {
  (void)c;
  if (o + n > DPU_JOURNAL_SIZE) return -1;
  return cut(journal + o, b, n);
}

int main(int argc, char **argv) {
  static dpu_applier applier;
  unsigned char *base, *target;
  long base_size, target_size, n;
  unsigned long cuts = 0, bad = 0, untouched = 0;
  dpu_io io;
  dpu_trust trust;
  dpu_status s;
  if (argc != 4) {
    fprintf(stderr, "usage: dpu_powercut BASE PATCH TARGET\n");
    return 2;
  }
  base = load(argv[1], &base_size);
  patch = load(argv[2], &patch_size);
  target = load(argv[3], &target_size);
  model = malloc((size_t)base_size);
  if (!model || base_size != target_size) return 2;
  model_size = base_size;
  memset(&io, 0, sizeof(io));
  io.read_patch = read_patch;
  io.read_base = read_model;
  io.write_out = write_model;
  io.read_journal = read_journal;
  io.write_journal = write_journal;
  memset(&trust, 0, sizeof(trust)); /* a device at round 0 that opted out of keys */
  for (n = 0;; n++) {
    memcpy(model, base, (size_t)base_size);
    memset(journal, 0xff, sizeof(journal));
    writes_left = n;
    model_written = 0;
    s = dpu_apply_in_place(&applier, &io, &trust, (uint32_t)patch_size,
                           (uint32_t)model_size, DPU_ALLOW_WHOLE_FILE | DPU_ALLOW_UNSIGNED);
    if (s == DPU_OK) {
      if (memcmp(model, target, (size_t)model_size) != 0) bad++;
      break; /* n writes were enough: every cut point has been tried */
    }
    cuts++;
    if (s != DPU_ERR_IO) { /* refused, not cut: no point trying further cuts */
      fprintf(stderr, "error: %s\n", dpu_strerror(s));
      return 2;
    }
    if (!model_written) {
      if (memcmp(model, base, (size_t)model_size) != 0) bad++;
      untouched++;
    }
    writes_left = -1; /* power back: no more cuts */
    s = dpu_apply_in_place(&applier, &io, &trust, (uint32_t)patch_size,
                           (uint32_t)model_size, DPU_ALLOW_WHOLE_FILE | DPU_ALLOW_UNSIGNED);
    if (s != DPU_OK || memcmp(model, target, (size_t)model_size) != 0) {
      fprintf(stderr, "cut %ld: resume gave %s\n", n, dpu_strerror(s));
      bad++;
    }
  }
  /* Applying again after completion must say so and change nothing. */
  writes_left = -1;
  s = dpu_apply_in_place(&applier, &io, &trust, (uint32_t)patch_size,
                           (uint32_t)model_size, DPU_ALLOW_WHOLE_FILE | DPU_ALLOW_UNSIGNED);
  if (s != DPU_ERR_ALREADY_APPLIED || memcmp(model, target, (size_t)model_size) != 0) bad++;
  printf("%lu cut points, %lu bad results, %lu cut before the model was touched\n", cuts, bad,
         untouched);
  return bad ? 1 : 0;
}
