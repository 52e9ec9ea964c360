/*
 * Fuzz target for the C applier (libFuzzer's entry point; see standalone.c
 * for a driver that needs no clang).
 *
 * Input byte 0 picks the mode:
 *   even: the rest is a whole patch, applied to the fixed base;
 *   odd:  the rest is a record body (after a 2-byte record count), sealed into
 *         a container with correct sizes, base hash and checksum, so that the
 *         record parser and decoders are what the fuzzer explores.
 * The callbacks abort on any access outside the patch, base or output, and on
 * output written out of order; an accepted patch must hash to its result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"

#define BASE_SIZE 4096u
#define MAX_PATCH (1u << 16)

static uint8_t base[BASE_SIZE];
static uint8_t out[BASE_SIZE];
static uint8_t patch[MAX_PATCH];
static uint8_t base_sha[32];
static uint32_t patch_size, next_write;
static int ready;

/* The base model's bytes; tests build their seed patches for the same bytes. */
static void make_base(void) {
  uint32_t i;
  dpu_sha256 sha;
  for (i = 0; i < BASE_SIZE; i++) base[i] = (uint8_t)((i * 131u + (i >> 8)) & 0xffu);
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, base, BASE_SIZE);
  dpu_sha256_final(&sha, base_sha);
  ready = 1;
}

static int read_patch(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  (void)ctx;
  if ((uint64_t)offset + len > patch_size) abort();
  memcpy(buf, patch + offset, len);
  return 0;
}

static int read_base(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  (void)ctx;
  if ((uint64_t)offset + len > BASE_SIZE) abort();
  memcpy(buf, base + offset, len);
  return 0;
}

static int write_out(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  (void)ctx;
  if ((uint64_t)offset + len > BASE_SIZE || offset != next_write) abort();
  memcpy(out + offset, buf, len);
  next_write = offset + len;
  return 0;
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static dpu_applier applier;
  dpu_io io;
  dpu_status status;
  if (!ready) make_base();
  if (size < 1) return 0;
  if ((data[0] & 1u) == 0) {
    if (size - 1 > MAX_PATCH) return 0;
    memcpy(patch, data + 1, size - 1);
    patch_size = (uint32_t)(size - 1);
  } else {
    dpu_sha256 sha;
    uint32_t body, count;
    if (size < 3 || size - 3 + DPU_HEADER_SIZE + DPU_CHECKSUM_SIZE > MAX_PATCH) return 0;
    count = (uint32_t)data[1] | ((uint32_t)data[2] << 8);
    body = (uint32_t)(size - 3);
    memset(patch, 0, DPU_HEADER_SIZE);
    memcpy(patch, "DPUP", 4);
    patch[4] = 1;
    put32(patch + 8, 1);
    put64(patch + 12, BASE_SIZE);
    put64(patch + 20, BASE_SIZE);
    memcpy(patch + 28, base_sha, 32);
    memset(patch + 60, 0xab, 32); /* a result no fuzzed body reproduces */
    put32(patch + 92, count);
    put32(patch + 96, body);
    memcpy(patch + DPU_HEADER_SIZE, data + 3, body);
    dpu_sha256_init(&sha);
    dpu_sha256_update(&sha, patch, DPU_HEADER_SIZE + body);
    dpu_sha256_final(&sha, patch + DPU_HEADER_SIZE + body);
    patch_size = DPU_HEADER_SIZE + body + DPU_CHECKSUM_SIZE;
  }
  io.ctx = NULL;
  io.read_patch = read_patch;
  io.read_base = read_base;
  io.write_out = write_out;
  io.verify_signature = NULL;
  next_write = 0;
  status = dpu_apply(&applier, &io, patch_size, BASE_SIZE, 0);
  if (status == DPU_OK) {
    /* Accepted: the output must be exactly the declared result. */
    dpu_sha256 sha;
    uint8_t digest[32];
    dpu_sha256_init(&sha);
    dpu_sha256_update(&sha, out, BASE_SIZE);
    dpu_sha256_final(&sha, digest);
    if (next_write != BASE_SIZE || memcmp(digest, patch + 60, 32) != 0) abort();
  }
  return 0;
}
