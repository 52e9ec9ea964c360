/*
 * Fuzz target for the C applier (libFuzzer's entry point; see standalone.c for
 * a driver that needs no clang). The base is a real int8 model (tiny_model.h),
 * so records meet the same weight-buffer rules as on a device.
 *
 * Input byte 0 picks the mode; its bit 1 turns on DPU_ALLOW_WHOLE_FILE.
 *   bit 0 clear: the rest is a whole patch, applied to the base as it is;
 *   bit 0 set:   the rest is a record body (after a 2-byte record count), sealed
 *                into a container with correct sizes, base hash and checksum,
 *                so that the record parser and decoders are what gets explored.
 * The callbacks abort on any access outside the patch, base or output, and on
 * output written out of order. An accepted patch must hash to its result.
 * When a sealed body is written through and only the (unknowable) result hash
 * fails, the body is sealed again with the hash of what was written: the
 * applier must then accept it and write the same bytes, so every body it
 * writes is one it accepts whole.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"
#include "memory_io.h"
#include "tiny_model.h"

#define MAX_PATCH (1u << 16)

static uint8_t out[MAX_PATCH], first_out[MAX_PATCH];
static uint8_t patch[MAX_PATCH];
static uint8_t base_sha[32];
static uint32_t patch_size;
static int ready;
static fuzz_memory memory;
/* How often a whole body was written (read by standalone.c's summary). */
unsigned long dpu_fuzz_written;

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

/* The body hash in the header, then the trailer over everything (unsigned). */
static void seal(uint32_t body) {
  dpu_sha256 sha;
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, patch + DPU_HEADER_SIZE, body);
  dpu_sha256_final(&sha, patch + 124);
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, patch, DPU_HEADER_SIZE + body);
  dpu_sha256_final(&sha, patch + DPU_HEADER_SIZE + body);
}

static dpu_status run(uint32_t options) {
  static dpu_applier applier;
  dpu_io io;
  fuzz_memory_io(&io, &memory);
  memory.patch = patch;
  memory.patch_size = patch_size;
  memory.base = tiny_model;
  memory.base_size = TINY_MODEL_SIZE;
  memory.out = out;
  memory.out_capacity = MAX_PATCH;
  memory.written = 0;
  dpu_trust trust;
  memset(&trust, 0, sizeof(trust)); /* round 0, no clock, no key: unsigned by opt-in */
  trust.max_round_jump = 0xffffffffu;
  return dpu_apply(&applier, &io, &trust, patch_size, TINY_MODEL_SIZE,
                   options | DPU_ALLOW_UNSIGNED);
}

static void check_accepted(void) {
  dpu_sha256 sha;
  uint8_t digest[32];
  uint32_t size = (uint32_t)patch[20] | ((uint32_t)patch[21] << 8) | ((uint32_t)patch[22] << 16) |
                  ((uint32_t)patch[23] << 24);
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, out, memory.written);
  dpu_sha256_final(&sha, digest);
  if (memory.written != size || memcmp(digest, patch + 60, 32) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dpu_status status;
  uint32_t options, body = 0;
  if (!ready) {
    dpu_sha256 sha;
    dpu_sha256_init(&sha);
    dpu_sha256_update(&sha, tiny_model, TINY_MODEL_SIZE);
    dpu_sha256_final(&sha, base_sha);
    ready = 1;
  }
  if (size < 1) return 0;
  options = (data[0] & 2u) ? DPU_ALLOW_WHOLE_FILE : 0;
  if ((data[0] & 1u) == 0) {
    if (size - 1 > MAX_PATCH) return 0;
    memcpy(patch, data + 1, size - 1);
    patch_size = (uint32_t)(size - 1);
  } else {
    uint32_t count, result_size;
    if (size < 3 || size - 3 + DPU_HEADER_SIZE + DPU_CHECKSUM_SIZE > MAX_PATCH) return 0;
    count = (uint32_t)data[1] | ((uint32_t)data[2] << 8);
    body = (uint32_t)(size - 3);
    /* a body that opens with a whole-file record declares its own result size */
    result_size = TINY_MODEL_SIZE;
    if (body >= 12 && data[3] == 3)
      result_size = (uint32_t)data[7] | ((uint32_t)data[8] << 8) | ((uint32_t)data[9] << 16) |
                    ((uint32_t)data[10] << 24);
    memset(patch, 0, DPU_HEADER_SIZE);
    memcpy(patch, "DPUP", 4);
    patch[4] = DPU_FORMAT_VERSION;
    put32(patch + 8, 1);
    put64(patch + 12, TINY_MODEL_SIZE);
    put64(patch + 20, result_size);
    memcpy(patch + 28, base_sha, 32);
    memset(patch + 60, 0xab, 32); /* a result no fuzzed body reproduces */
    put32(patch + 92, count);
    put32(patch + 96, body);
    memcpy(patch + DPU_HEADER_SIZE, data + 3, body);
    seal(body);
    patch_size = DPU_HEADER_SIZE + body + DPU_CHECKSUM_SIZE;
  }
  status = run(options);
  if (status == DPU_OK) check_accepted();
  if (status == DPU_ERR_RESULT && (data[0] & 1u)) {
    /* the applier wrote the whole body: it must accept the body whole */
    uint32_t written = memory.written;
    dpu_sha256 sha;
    memcpy(first_out, out, written);
    dpu_sha256_init(&sha);
    dpu_sha256_update(&sha, out, written);
    dpu_sha256_final(&sha, patch + 60);
    seal(body);
    if (run(options) != DPU_OK || memory.written != written || memcmp(out, first_out, written) != 0)
      abort();
    dpu_fuzz_written++;
  }
  return 0;
}
