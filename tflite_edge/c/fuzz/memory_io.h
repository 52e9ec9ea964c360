/*
 * In-memory patch, base and output for the fuzz drivers. Every access is
 * checked against the buffers' real sizes and the output must be written in
 * order, so an applier that reads or writes outside them aborts the run.
 */
#ifndef DPU_FUZZ_MEMORY_IO_H
#define DPU_FUZZ_MEMORY_IO_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"

typedef struct {
  const uint8_t *patch, *base;
  uint64_t patch_size, base_size;
  uint8_t *out;
  uint64_t out_capacity;
  uint32_t written; /* bytes written so far, in order */
  /* Changing storage: after `switch_after` reads of the patch, reads are served
   * from patch2 (as far as it reaches; beyond it, zeros). Zero the struct for
   * storage that never changes (switch_after is then set to all ones). */
  const uint8_t *patch2;
  uint64_t patch2_size;
  uint32_t switch_after, reads;
} fuzz_memory;

static int fuzz_read_patch(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  fuzz_memory *m = (fuzz_memory *)ctx;
  if ((uint64_t)offset + len > m->patch_size) abort();
  if (m->patch2 && m->reads++ >= m->switch_after) {
    uint64_t have = offset < m->patch2_size ? m->patch2_size - offset : 0;
    memset(buf, 0, len);
    memcpy(buf, m->patch2 + (have ? offset : 0), have < len ? have : len);
    return 0;
  }
  memcpy(buf, m->patch + offset, len);
  return 0;
}

static int fuzz_read_base(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  const fuzz_memory *m = (const fuzz_memory *)ctx;
  if ((uint64_t)offset + len > m->base_size) abort();
  memcpy(buf, m->base + offset, len);
  return 0;
}

static int fuzz_write_out(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  fuzz_memory *m = (fuzz_memory *)ctx;
  if ((uint64_t)offset + len > m->out_capacity || offset != m->written) abort();
  memcpy(m->out + offset, buf, len);
  m->written = offset + len;
  return 0;
}

/* Points `io` at `m` (the signature callback, if any, is the caller's). */
static void fuzz_memory_io(dpu_io *io, fuzz_memory *m) {
  memset(io, 0, sizeof(*io));
  io->ctx = m;
  io->read_patch = fuzz_read_patch;
  io->read_base = fuzz_read_base;
  io->write_out = fuzz_write_out;
}

#endif
