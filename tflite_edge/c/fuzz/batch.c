/*
 * Differential driver: runs the C applier over patches whose outcome the Python
 * applier already decided, and aborts at the first disagreement.
 *   dpu_batch FILE...
 * Each FILE (written by benchmarks/fuzz.py) holds "DPUC", the base model
 * (u32 size, bytes), a public key flag and key (u8, 32 bytes), the options
 * (u8: DPU_ALLOW_WHOLE_FILE, DPU_ALLOW_UNSIGNED), the device's trust state
 * (u32 round, u64 release time, u64 clock), then u32 count entries of: u32
 * length, u8 verdict, the patch, u32 switch, u32 length2, a second patch.
 * Verdicts: 0 accepted (the C applier must return DPU_OK and write exactly
 * the declared result), 1 written but refused at the result hash (it must
 * return DPU_ERR_RESULT: it decoded the same body), 2 refused before writing
 * anything (any other error). So a body the Python decoder refuses that the
 * C applier writes anyway is caught, and the other way round.
 * Changing storage: when switch is not 0xffffffff, the patch's storage serves
 * the first patch for that many reads and the second one after them (flash
 * rewritten, or a downloader still writing, between the applier's reads).
 * The C applier must then refuse, or write exactly the result the first
 * patch's header declares (the header it read once and verified): never
 * another output, whatever the second patch's bytes decode to.
 * Built with -DDPU_WITH_OPENSSL, signed patches are verified with OpenSSL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dpu_patch.h"
#include "memory_io.h"

static uint8_t *base, *patch, *patch2, *out;
static uint32_t base_size, patch_size, patch2_size;
static uint8_t public_key[32];

#ifdef DPU_WITH_OPENSSL
#include <openssl/evp.h>

static int verify_ed25519(void *ctx, const uint8_t key32[32], const uint8_t *message,
                          uint32_t length, const uint8_t signature[64]) {
  EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, key32, 32);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = 0;
  (void)ctx;
  if (length != DPU_HEADER_SIZE) abort(); /* the header it holds, nothing else */
  if (key && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1)
    ok = EVP_DigestVerify(md, signature, 64, message, length) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  return ok ? 0 : -1;
}
#endif

static int read_u64(FILE *f, uint64_t *v);

static int read_u32(FILE *f, uint32_t *v) {
  uint8_t b[4];
  if (fread(b, 1, 4, f) != 4) return -1;
  *v = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
  return 0;
}

static int read_u64(FILE *f, uint64_t *v) {
  uint32_t lo, hi;
  if (read_u32(f, &lo) != 0 || read_u32(f, &hi) != 0) return -1;
  *v = (uint64_t)lo | ((uint64_t)hi << 32);
  return 0;
}

static uint8_t *read_blob(FILE *f, uint8_t *buf, uint32_t *size) {
  if (read_u32(f, size) != 0) return NULL;
  buf = realloc(buf, *size ? *size : 1);
  if (buf && fread(buf, 1, *size, f) != *size) return NULL;
  return buf;
}

static int run_file(const char *path, unsigned long counts[5]) {
  static dpu_applier applier;
  static const char *names[3] = {"accepted", "refused at the result hash", "refused"};
  FILE *f = fopen(path, "rb");
  uint8_t magic[4], has_key = 0, options = 0, verdict;
  uint32_t count, i, round, switch_after;
  dpu_io io;
  dpu_trust trust;
  fuzz_memory memory;
  memset(&trust, 0, sizeof(trust));
  if (!f || fread(magic, 1, 4, f) != 4 || memcmp(magic, "DPUC", 4) != 0 ||
      read_u32(f, &base_size) != 0) {
    fprintf(stderr, "error: %s is not a batch file\n", path);
    return 2;
  }
  base = realloc(base, base_size ? base_size : 1);
  if (!base || fread(base, 1, base_size, f) != base_size || fread(&has_key, 1, 1, f) != 1 ||
      fread(public_key, 1, 32, f) != 32 || fread(&options, 1, 1, f) != 1 ||
      read_u32(f, &round) != 0 || read_u64(f, &trust.release_time) != 0 ||
      read_u64(f, &trust.now) != 0 || read_u32(f, &count) != 0) {
    fprintf(stderr, "error: %s is truncated\n", path);
    return 2;
  }
  trust.round = round;
  if (has_key) trust.public_key = public_key;
  fuzz_memory_io(&io, &memory);
#ifdef DPU_WITH_OPENSSL
  io.verify_signature = verify_ed25519;
#else
  if (has_key) {
    fprintf(stderr, "error: %s needs signatures: build with OpenSSL\n", path);
    return 2;
  }
#endif
  for (i = 0; i < count; i++) {
    dpu_status status;
    int got;
    if (read_u32(f, &patch_size) != 0 || fread(&verdict, 1, 1, f) != 1 || verdict > 2) {
      fprintf(stderr, "error: %s is truncated at entry %u\n", path, i);
      return 2;
    }
    patch = realloc(patch, patch_size ? patch_size : 1);
    if (!patch || fread(patch, 1, patch_size, f) != patch_size ||
        read_u32(f, &switch_after) != 0 || !(patch2 = read_blob(f, patch2, &patch2_size))) {
      fprintf(stderr, "error: %s is truncated at entry %u\n", path, i);
      return 2;
    }
    out = realloc(out, patch_size > base_size ? patch_size : base_size);
    if (!out) return 2;
    memory.patch = patch;
    memory.patch_size = patch_size;
    memory.patch2 = patch2;
    memory.patch2_size = patch2_size;
    memory.switch_after = switch_after;
    memory.reads = 0;
    memory.base = base;
    memory.base_size = base_size;
    memory.out = out;
    memory.out_capacity = patch_size > base_size ? patch_size : base_size;
    memory.written = 0;
    status = dpu_apply(&applier, &io, &trust, patch_size, base_size, options);
    got = status == DPU_OK ? 0 : (status == DPU_ERR_RESULT ? 1 : 2);
    if (got == 0 && (memory.written != applier.info.result_size)) abort();
    if (switch_after != 0xffffffffu && memory.reads > switch_after) {
      /* the storage changed under it: a refusal, or exactly the declared result */
      if (got == 0) {
        dpu_sha256 sha;
        uint8_t digest[32];
        dpu_sha256_init(&sha);
        dpu_sha256_update(&sha, out, memory.written);
        dpu_sha256_final(&sha, digest);
        if (patch_size < 92 || memcmp(digest, patch + 60, 32) != 0) {
          fprintf(stderr, "entry %u of %s: storage changed after %u reads and the C applier "
                          "wrote something other than the first header's result\n", i, path,
                  switch_after);
          abort();
        }
      }
      counts[got == 0 ? 3 : 4]++;
      continue;
    }
    if (got != verdict) {
      fprintf(stderr, "disagreement at entry %u of %s: the Python applier %s it, the C "
                      "applier returned \"%s\"\n", i, path, names[verdict], dpu_strerror(status));
      abort();
    }
    counts[got]++;
  }
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  unsigned long counts[5] = {0, 0, 0, 0, 0};
  int a;
  if (argc < 2) {
    fprintf(stderr, "usage: dpu_batch FILE...\n");
    return 2;
  }
  for (a = 1; a < argc; a++)
    if (run_file(argv[a], counts) != 0) return 2;
  printf("%lu inputs: %lu accepted, %lu refused at the result hash, %lu refused; "
         "no disagreement; changing storage: %lu accepted as verified, %lu refused\n",
         counts[0] + counts[1] + counts[2] + counts[3] + counts[4], counts[0], counts[1],
         counts[2], counts[3], counts[4]);
  free(base);
  free(patch);
  free(patch2);
  free(out);
  return 0;
}
