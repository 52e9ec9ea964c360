/* Command-line driver for the C applier (host builds and tests):
 *   dpu_apply [--min-round N] [--bench REPEATS] [--public-key KEY] BASE PATCH OUT
 * --public-key (builds with -DDPU_WITH_OPENSSL) plugs OpenSSL's Ed25519 into
 * the verify callback, as firmware would plug in its own library; KEY holds
 * the raw 32-byte public key.
 * --bench applies the patch REPEATS times in one process and prints the
 * seconds per application (CPU time), for the benchmarks.
 * Reads through the same callbacks a firmware would implement. On any error
 * OUT is removed, one line goes to stderr, and the exit status is 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpu_patch.h"

typedef struct {
  FILE *patch, *base, *out;
  unsigned char public_key[32];
} files;

static int read_at(FILE *f, uint32_t offset, uint8_t *buf, uint32_t len) {
  if (fseek(f, (long)offset, SEEK_SET) != 0) return -1;
  return fread(buf, 1, len, f) == len ? 0 : -1;
}

static int read_patch(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  return read_at(((files *)ctx)->patch, offset, buf, len);
}

static int read_base(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  return read_at(((files *)ctx)->base, offset, buf, len);
}

static int write_out(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  FILE *f = ((files *)ctx)->out;
  if (fseek(f, (long)offset, SEEK_SET) != 0) return -1;
  return fwrite(buf, 1, len, f) == len ? 0 : -1;
}

#ifdef DPU_WITH_OPENSSL
#include <openssl/evp.h>

static int verify_ed25519(void *ctx, uint32_t length, const uint8_t signature[64]) {
  files *fs = (files *)ctx;
  unsigned char *message = malloc(length ? length : 1);
  EVP_PKEY *key;
  EVP_MD_CTX *md;
  int ok = 0;
  if (!message || read_at(fs->patch, 0, message, length) != 0) {
    free(message);
    return -1;
  }
  key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, fs->public_key, 32);
  md = EVP_MD_CTX_new();
  if (key && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1)
    ok = EVP_DigestVerify(md, signature, 64, message, length) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  free(message);
  return ok ? 0 : -1;
}
#endif

static long size_of(FILE *f) {
  long size;
  if (fseek(f, 0, SEEK_END) != 0) return -1;
  size = ftell(f);
  return size;
}

int main(int argc, char **argv) {
  static dpu_applier applier;
  files fs;
  dpu_io io;
  dpu_status status;
  unsigned long min_round = 0, repeats = 1, r;
  int bench = 0;
  long patch_size, base_size;
  int arg = 1, with_key = 0;
  clock_t started;
  if (argc == 2 && strcmp(argv[1], "--sizeof") == 0) {
    printf("%lu\n", (unsigned long)sizeof(dpu_applier));
    return 0;
  }
  while (argc - arg > 3) {
    if (strcmp(argv[arg], "--min-round") == 0) {
      min_round = strtoul(argv[arg + 1], NULL, 10);
    } else if (strcmp(argv[arg], "--public-key") == 0) {
      FILE *k = fopen(argv[arg + 1], "rb");
      size_t got = k ? fread(fs.public_key, 1, sizeof(fs.public_key), k) : 0;
      if (k) fclose(k);
      if (got != sizeof(fs.public_key)) {
        fprintf(stderr, "error: %s is not a raw 32-byte Ed25519 public key\n", argv[arg + 1]);
        return 2;
      }
#ifndef DPU_WITH_OPENSSL
      fprintf(stderr, "error: this build has no signature support (build with OpenSSL)\n");
      return 2;
#endif
      with_key = 1;
    } else if (strcmp(argv[arg], "--bench") == 0) {
      repeats = strtoul(argv[arg + 1], NULL, 10);
      if (repeats == 0) repeats = 1;
      bench = 1;
    } else {
      break;
    }
    arg += 2;
  }
  if (argc - arg != 3) {
    fprintf(stderr, "usage: dpu_apply [--min-round N] BASE PATCH OUT\n");
    return 2;
  }
  fs.base = fopen(argv[arg], "rb");
  fs.patch = fopen(argv[arg + 1], "rb");
  if (!fs.base || !fs.patch) {
    fprintf(stderr, "error: cannot open %s\n", fs.base ? argv[arg + 1] : argv[arg]);
    return 2;
  }
  patch_size = size_of(fs.patch);
  base_size = size_of(fs.base);
  if (patch_size < 0 || base_size < 0) {
    fprintf(stderr, "error: cannot read input sizes\n");
    return 2;
  }
  fs.out = fopen(argv[arg + 2], "wb");
  if (!fs.out) {
    fprintf(stderr, "error: cannot create %s\n", argv[arg + 2]);
    return 2;
  }
  io.ctx = &fs;
  io.read_patch = read_patch;
  io.read_base = read_base;
  io.write_out = write_out;
  io.verify_signature = NULL;
#ifdef DPU_WITH_OPENSSL
  if (with_key) io.verify_signature = verify_ed25519;
#endif
  (void)with_key;
  started = clock();
  status = DPU_OK;
  for (r = 0; r < repeats && status == DPU_OK; r++) {
    status = dpu_apply(&applier, &io, (uint32_t)patch_size, (uint32_t)base_size,
                       (uint32_t)min_round);
  }
  if (bench && status == DPU_OK) {
    printf("%.9f\n", (double)(clock() - started) / CLOCKS_PER_SEC / (double)repeats);
  }
  if (fclose(fs.out) != 0 && status == DPU_OK) status = DPU_ERR_IO;
  fclose(fs.base);
  fclose(fs.patch);
  if (status != DPU_OK) {
    remove(argv[arg + 2]);
    fprintf(stderr, "error: %s\n", dpu_strerror(status));
    return 2;
  }
  return 0;
}
