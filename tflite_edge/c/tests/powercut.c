/*
 * Power-loss test of the in-place applier:
 *   dpu_powercut BASE PATCH TARGET [SECTOR_SIZE]
 * For every n, applies the patch in place with the power cut at the n-th write
 * (model or journal; the write in progress is torn: only its first half lands),
 * then "reboots" and calls the applier again. The model must end up
 * byte-identical to TARGET every time, and be byte-identical to BASE when the
 * cut came before the first model write. The journal starts erased (0xff).
 *
 * With SECTOR_SIZE, dpu_apply_in_sectors on simulated NOR flash: erasing a
 * sector counts as a write too (a torn erase leaves its second half as it
 * was), the journal starts as garbage, and programming a byte that is not
 * erased is counted as a violation (the result must have none). It also
 * reports the model sector erases of an uninterrupted apply and how many
 * sectors the patch changes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"

static unsigned char *patch, *model, *journal;
static long patch_size, model_size, journal_size = DPU_JOURNAL_SIZE, storage_size;
static long writes_left; /* < 0: no cut */
static int model_written;
static uint32_t sector_size; /* 0: the plain in-place mode */
static unsigned long violations, model_erases;

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

/* Counts a write; at the cut, stores only the first half and fails. On NOR
 * flash, programming a byte that is not erased is a violation. */
static int cut(unsigned char *dst, const uint8_t *buf, uint32_t len) {
  uint32_t i;
  if (writes_left == -2) return -1;
  if (sector_size)
    for (i = 0; i < len; i++)
      if (dst[i] != 0xffu) violations++;
  if (writes_left == 0) {
    memcpy(dst, buf, len / 2);
    writes_left = -2; /* powered off: every later call fails */
    return -1;
  }
  if (writes_left > 0) writes_left--;
  memcpy(dst, buf, len);
  return 0;
}

/* Erases whole sectors (a cut erases the first half only). */
static int erase(unsigned char *area, long area_size, uint32_t offset, uint32_t len) {
  if (writes_left == -2 || offset % sector_size || len % sector_size ||
      (long)offset + len > area_size)
    return -1;
  if (writes_left == 0) {
    memset(area + offset, 0xff, len / 2);
    writes_left = -2;
    return -1;
  }
  if (writes_left > 0) writes_left--;
  memset(area + offset, 0xff, len);
  return 0;
}

static int erase_model(void *c, uint32_t o, uint32_t n) {
  (void)c;
  if (writes_left != -2) model_written = 1;
  model_erases++;
  return erase(model, storage_size, o, n);
}

static int erase_journal(void *c, uint32_t o, uint32_t n) {
  (void)c;
  return erase(journal, journal_size, o, n);
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
  if (writes_left == -2 || (long)o + n > journal_size) return -1;
  memcpy(b, journal + o, n);
  return 0;
}

static int write_journal(void *c, uint32_t o, const uint8_t *b, uint32_t n) {
  (void)c;
  if ((long)o + n > journal_size) return -1;
  return cut(journal + o, b, n);
}

static dpu_io io;
static dpu_trust trust;
static dpu_sectors sectors;

static dpu_status apply(void) {
  static dpu_applier applier;
  const uint32_t options = DPU_ALLOW_WHOLE_FILE | DPU_ALLOW_UNSIGNED;
  if (sector_size)
    return dpu_apply_in_sectors(&applier, &io, &sectors, &trust, (uint32_t)patch_size,
                                (uint32_t)model_size, options);
  return dpu_apply_in_place(&applier, &io, &trust, (uint32_t)patch_size, (uint32_t)model_size,
                            options);
}

/* The journal's first state: erased, or (on NOR flash) garbage. */
static void fresh_journal(void) {
  long i;
  uint32_t x = 12345u;
  for (i = 0; i < journal_size; i++) {
    x = x * 1103515245u + 12345u;
    journal[i] = sector_size ? (unsigned char)(x >> 24) : 0xffu;
  }
}

int main(int argc, char **argv) {
  unsigned char *base, *target;
  long base_size, target_size, n;
  unsigned long cuts = 0, bad = 0, untouched = 0, changed = 0, clean_erases = 0;
  dpu_status s;
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: dpu_powercut BASE PATCH TARGET [SECTOR_SIZE]\n");
    return 2;
  }
  base = load(argv[1], &base_size);
  patch = load(argv[2], &patch_size);
  target = load(argv[3], &target_size);
  if (argc == 5) {
    sector_size = (uint32_t)strtoul(argv[4], NULL, 10);
    journal_size = DPU_SECTOR_JOURNAL_SIZE(sector_size);
  }
  model_size = base_size;
  storage_size = sector_size ? (base_size + sector_size - 1) / sector_size * sector_size
                             : base_size;
  model = malloc((size_t)storage_size);
  journal = malloc((size_t)journal_size);
  if (!model || !journal || base_size != target_size) return 2;
  if (sector_size)
    for (n = 0; n < base_size; n += sector_size)
      if (memcmp(base + n, target + n,
                 (size_t)(base_size - n < (long)sector_size ? base_size - n : sector_size)))
        changed++;
  memset(&io, 0, sizeof(io));
  io.read_patch = read_patch;
  io.read_base = read_model;
  io.write_out = write_model;
  io.read_journal = read_journal;
  io.write_journal = write_journal;
  sectors.sector_size = sector_size;
  sectors.erase_model = erase_model;
  sectors.erase_journal = erase_journal;
  memset(&trust, 0, sizeof(trust)); /* a device at round 0 that opted out of keys */
  for (n = 0;; n++) {
    memset(model, 0xff, (size_t)storage_size);
    memcpy(model, base, (size_t)base_size);
    fresh_journal();
    writes_left = n;
    model_written = 0;
    model_erases = 0;
    s = apply();
    if (s == DPU_OK) {
      if (memcmp(model, target, (size_t)model_size) != 0) bad++;
      clean_erases = model_erases;
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
    s = apply();
    if (s != DPU_OK || memcmp(model, target, (size_t)model_size) != 0) {
      fprintf(stderr, "cut %ld: resume gave %s\n", n, dpu_strerror(s));
      bad++;
    }
    if (bad >= 20) { /* a broken applier may never finish: stop at a clear verdict */
      fprintf(stderr, "stopped after %lu bad results\n", bad);
      return 1;
    }
  }
  /* Applying again after completion must say so and change nothing. */
  writes_left = -1;
  s = apply();
  if (s != DPU_ERR_ALREADY_APPLIED || memcmp(model, target, (size_t)model_size) != 0) bad++;
  printf("%lu cut points, %lu bad results, %lu cut before the model was touched, "
         "%lu programs of bytes not erased, %lu model sector erases for %lu changed sectors\n",
         cuts, bad, untouched, violations, clean_erases, changed);
  return bad || violations ? 1 : 0;
}
