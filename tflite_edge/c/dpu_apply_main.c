/* Command-line driver for the C applier (host builds and tests):
 *   dpu_apply (--public_key KEY | --allow_unsigned) [--round N] [--release_time T]
 *             [--now T] [--max_round_jump J] [--key_out FILE]
 *             [--whole_file signed|always|never] [--bench REPEATS] BASE PATCH OUT
 *   dpu_apply --in_place (--public_key KEY | --allow_unsigned) [--round N] ... MODEL PATCH MODEL
 *   dpu_apply --in_place --sector_size=N ... MODEL PATCH MODEL     (NOR flash, on files)
 *   dpu_apply --check_key KEY
 *
 * It reads through the same callbacks a firmware would implement.
 * - Copy mode writes the result to a new temporary file beside OUT, flushes it
 *   and renames it over OUT only once the applier returned DPU_OK; on any error
 *   the temporary file is removed and OUT is left as it was (through a symbolic
 *   link too: the link's target is what gets replaced). OUT may not be BASE.
 * - In-place mode (OUT must be BASE) patches the model where it lies, with the
 *   journal in MODEL.journal, and resumes after an interruption when run again.
 *   With --sector_size it runs dpu_apply_in_sectors, the mode for NOR flash, on
 *   the files (an erase writes 0xff), so a firmware's sector size can be tried
 *   on a host first.
 * --public_key (builds with -DDPU_WITH_OPENSSL, or -DDPU_WITH_MONOCYPHER for the
 * microcontroller recipe of ed25519/) plugs OpenSSL's Ed25519 (or Monocypher's)
 * into the verify callback, as firmware would plug in its own library; KEY is exactly the
 * raw 32-byte public key, checked with dpu_check_public_key. Without it the
 * driver refuses to run unless --allow_unsigned is given.
 * --round, --release_time: the device's trust state (dpu_trust): the round of
 * its model and the release time of the last update applied; --now the clock
 * (0 or absent: none). Numbers are decimal, in range, and nothing else.
 * --key_out: where the key the device trusts after the update is written (a
 * rotation changes it; a patch that rotates is refused without --key_out).
 * On success one line names the round, the release time and whether the
 * signature was verified or the patch applied UNSIGNED.
 * --whole_file: accept whole-file updates only from signed patches verified
 * with --public_key (signed, the default), always, or never.
 * --bench applies the patch REPEATS times in one process and prints the
 * seconds per application (CPU time), for the benchmarks.
 * On any error one line goes to stderr and the exit status is 2. */
#define _XOPEN_SOURCE 700

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dpu_patch.h"

typedef struct {
  FILE *patch, *base, *out, *journal;
} files;

static int read_at(FILE *f, uint32_t offset, uint8_t *buf, uint32_t len) {
  if (fseek(f, (long)offset, SEEK_SET) != 0) return -1;
  return fread(buf, 1, len, f) == len ? 0 : -1;
}

static int write_at(FILE *f, uint32_t offset, const uint8_t *buf, uint32_t len) {
  if (fseek(f, (long)offset, SEEK_SET) != 0) return -1;
  return fwrite(buf, 1, len, f) == len ? 0 : -1;
}

static int read_patch(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  return read_at(((files *)ctx)->patch, offset, buf, len);
}

static int read_base(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  return read_at(((files *)ctx)->base, offset, buf, len);
}

static int write_out(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  FILE *f = ((files *)ctx)->out;
  /* in place, the write must reach the disk before the next journal entry */
  if (write_at(f, offset, buf, len) != 0) return -1;
  return ((files *)ctx)->journal ? (fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -1) : 0;
}

/* The journal file may be shorter than the journal (new, or cut off): the rest
 * reads as zeros, which the applier treats as an empty slot. */
static int read_journal(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  FILE *f = ((files *)ctx)->journal;
  size_t got;
  if (fseek(f, (long)offset, SEEK_SET) != 0) return -1;
  got = fread(buf, 1, len, f);
  memset(buf + got, 0, len - got);
  return 0;
}

static int write_journal(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  FILE *f = ((files *)ctx)->journal;
  if (write_at(f, offset, buf, len) != 0) return -1;
  return fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -1;
}

/* An erase as NOR flash does it: 0xff over [offset, offset + len), not past
 * `limit` bytes (the model file's end; the journal grows as needed). */
static int erase_at(FILE *f, uint32_t offset, uint32_t len, long limit) {
  uint8_t ones[256];
  memset(ones, 0xff, sizeof(ones));
  if (limit >= 0 && (long)offset + (long)len > limit)
    len = (long)offset < limit ? (uint32_t)(limit - (long)offset) : 0u;
  while (len > 0) {
    uint32_t take = len < sizeof(ones) ? len : (uint32_t)sizeof(ones);
    if (write_at(f, offset, ones, take) != 0) return -1;
    offset += take;
    len -= take;
  }
  return fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -1;
}

static long model_limit = -1;

static int erase_model(void *ctx, uint32_t offset, uint32_t len) {
  return erase_at(((files *)ctx)->out, offset, len, model_limit);
}

static int erase_journal(void *ctx, uint32_t offset, uint32_t len) {
  return erase_at(((files *)ctx)->journal, offset, len, -1);
}

#ifdef DPU_WITH_OPENSSL
#include <openssl/evp.h>

/* The message is the header the applier holds in RAM: nothing is read again. */
static int verify_ed25519(void *ctx, const uint8_t public_key[32], const uint8_t *message,
                          uint32_t length, const uint8_t signature[64]) {
  EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, public_key, 32);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = 0;
  (void)ctx;
  if (key && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1)
    ok = EVP_DigestVerify(md, signature, 64, message, length) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  return ok ? 0 : -1;
}
#define DPU_WITH_SIGNATURES
#elif defined(DPU_WITH_MONOCYPHER)
#include "ed25519/dpu_ed25519.h"

static int verify_ed25519(void *ctx, const uint8_t public_key[32], const uint8_t *message,
                          uint32_t length, const uint8_t signature[64]) {
  (void)ctx;
  return dpu_ed25519_verify(public_key, message, length, signature);
}
#define DPU_WITH_SIGNATURES
#endif

static int fail(const char *message, const char *what) {
  fprintf(stderr, "error: %s%s%s\n", message, what ? ": " : "", what ? what : "");
  return 2;
}

static long size_of(FILE *f) {
  if (fseek(f, 0, SEEK_END) != 0) return -1;
  return ftell(f);
}

/* Exactly 32 bytes, a valid point, not of small order. */
static int load_key(const char *path, unsigned char key[32]) {
  unsigned char extra;
  FILE *k = fopen(path, "rb");
  size_t got = k ? fread(key, 1, 32, k) : 0;
  int longer = k ? fread(&extra, 1, 1, k) == 1 : 0;
  dpu_status status;
  if (k) fclose(k);
  if (!k) return fail("cannot read public key", path);
  if (got != 32 || longer) return fail("not a raw 32-byte Ed25519 public key", path);
  status = dpu_check_public_key(key);
  if (status != DPU_OK) return fail(dpu_strerror(status), path);
  return 0;
}

/* A decimal number in [0, max] and nothing else: no sign, no spaces, no hex, no
 * wrap-around (strtoul reads "abc" as 0 and "4294967296" as 0 after a cast). */
static int parse_number(const char *name, const char *text, uint64_t max, uint64_t *value) {
  const char *c = text;
  uint64_t v = 0;
  if (*c == '\0') return fail("expects a decimal number", name);
  for (; *c; c++) {
    if (*c < '0' || *c > '9' || v > (max - (uint64_t)(*c - '0')) / 10u) {
      fprintf(stderr, "error: %s must be a decimal integer in [0, %llu], not '%s'\n", name,
              (unsigned long long)max, text);
      return 2;
    }
    v = v * 10u + (uint64_t)(*c - '0');
  }
  *value = v;
  return 0;
}

static int write_key(const char *path, const uint8_t key[32]) {
  FILE *f = fopen(path, "wb");
  int ok = f && fwrite(key, 1, 32, f) == 32;
  if (f && fclose(f) != 0) ok = 0;
  return ok ? 0 : fail("cannot write", path);
}

static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

/* Flushes the folder holding `path`, so that a rename into it survives a crash. */
static int sync_folder(const char *path) {
  char folder[PATH_MAX];
  char *slash;
  FILE *f;
  int ok;
  strncpy(folder, path, sizeof(folder) - 1);
  folder[sizeof(folder) - 1] = '\0';
  slash = strrchr(folder, '/');
  if (slash == folder) slash[1] = '\0';
  else if (slash) *slash = '\0';
  else strcpy(folder, ".");
  f = fopen(folder, "r");
  if (!f) return -1;
  ok = fsync(fileno(f));
  fclose(f);
  return ok;
}

/* A symbolic link whose target does not exist. */
static int is_dangling_link(const char *path) {
  struct stat link, target;
  return lstat(path, &link) == 0 && S_ISLNK(link.st_mode) && stat(path, &target) != 0;
}

/* The success line, and the key the device trusts from now on (--key_out). */
static int report(const dpu_info *info, const char *out, const uint8_t *key,
                  const char *key_out) {
  const uint8_t *trusted = info->rotated ? info->next_key : key;
  unsigned i;
  if (info->rotated && !key_out) {
    fprintf(stderr, "error: the patch rotated the signing key but --key_out was not given; "
                    "the new key is ");
    for (i = 0; i < 32; i++) fprintf(stderr, "%02x", info->next_key[i]);
    fprintf(stderr, "\n");
    return 2;
  }
  if (key_out && trusted && write_key(key_out, trusted) != 0) return 2;
  printf("wrote %s: %lu bytes, %s, round %lu, release_time %llu%s\n", out,
         (unsigned long)info->result_size,
         info->verified ? "verified" : "UNSIGNED: no signature was checked",
         (unsigned long)info->round, (unsigned long long)info->release_time,
         info->rotated ? ", signing key rotated" : "");
  return 0;
}

/* The real path OUT names (following a symbolic link to an existing file). */
static void resolve(const char *out, char *real, size_t size) {
  char buf[PATH_MAX];
  if (realpath(out, buf) != NULL && strlen(buf) < size) {
    strcpy(real, buf);
  } else {
    strncpy(real, out, size - 1);
    real[size - 1] = '\0';
  }
}

int main(int argc, char **argv) {
  static dpu_applier applier;
  static char target[PATH_MAX], temporary[PATH_MAX + 16];
  static unsigned char public_key[32];
  files fs;
  dpu_io io;
  dpu_trust trust;
  dpu_status status;
  uint64_t number, repeats = 1, r, sector_size = 0;
  int bench = 0, in_place = 0, with_key = 0, allow_unsigned = 0, fd = -1;
  const char *whole = "signed", *key_out = NULL;
  uint32_t options = 0;
  long patch_size, base_size;
  int arg = 1;
  clock_t started;
  struct stat existing;
  memset(&fs, 0, sizeof(fs));
  memset(&trust, 0, sizeof(trust));
  if (argc == 2 && strcmp(argv[1], "--sizeof") == 0) {
    printf("%lu\n", (unsigned long)sizeof(dpu_applier));
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "--check_key") == 0) /* provisioning a key */
    return load_key(argv[2], public_key) ? 2 : 0;
  while (arg < argc && strncmp(argv[arg], "--", 2) == 0) {
    /* --name VALUE or --name=VALUE */
    static char name[32];
    const char *value, *equals = strchr(argv[arg], '=');
    size_t length = equals ? (size_t)(equals - argv[arg]) : strlen(argv[arg]);
    if (length >= sizeof(name)) return fail("unknown option", argv[arg]);
    memcpy(name, argv[arg], length);
    name[length] = '\0';
    if ((strcmp(name, "--in_place") == 0 || strcmp(name, "--allow_unsigned") == 0)) {
      if (equals) return fail("takes no value", argv[arg]);
      if (name[2] == 'i') in_place = 1;
      else allow_unsigned = 1;
      arg += 1;
      continue;
    }
    if (!equals && arg + 1 >= argc) return fail("missing value after", argv[arg]);
    value = equals ? equals + 1 : argv[arg + 1];
    if (strcmp(name, "--round") == 0) {
      if (parse_number(name, value, DPU_MAX_ROUND, &number)) return 2;
      trust.round = (uint32_t)number;
    } else if (strcmp(name, "--release_time") == 0) {
      if (parse_number(name, value, UINT64_MAX, &trust.release_time)) return 2;
    } else if (strcmp(name, "--now") == 0) {
      if (parse_number(name, value, UINT64_MAX, &trust.now)) return 2;
    } else if (strcmp(name, "--max_round_jump") == 0) {
      if (parse_number(name, value, 0xffffffffu, &number) || number == 0)
        return number == 0 ? fail("--max_round_jump must be at least 1", value) : 2;
      trust.max_round_jump = (uint32_t)number;
    } else if (strcmp(name, "--key_out") == 0) {
      if (!*value) return fail("--key_out is empty", NULL);
      key_out = value;
    } else if (strcmp(name, "--public_key") == 0) {
#ifndef DPU_WITH_SIGNATURES
      return fail("this build has no signature support (build with OpenSSL or Monocypher)", NULL);
#endif
      if (!*value) return fail("the public key path is empty (an unset variable?)", NULL);
      if (load_key(value, public_key) != 0) return 2;
      with_key = 1;
    } else if (strcmp(name, "--whole_file") == 0) {
      whole = value;
      if (strcmp(whole, "signed") && strcmp(whole, "always") && strcmp(whole, "never"))
        return fail("--whole_file takes signed, always or never, not", whole);
    } else if (strcmp(name, "--sector_size") == 0) {
      if (parse_number(name, value, 1u << 24, &sector_size)) return 2;
      if (sector_size == 0) return fail("--sector_size must be at least 256 (bytes)", value);
    } else if (strcmp(name, "--bench") == 0) {
      if (parse_number(name, value, 1000000000u, &repeats)) return 2;
      if (repeats == 0) repeats = 1;
      bench = 1;
    } else {
      return fail("unknown option", argv[arg]);
    }
    arg += equals ? 1 : 2;
  }
  if (argc - arg != 3) {
    fprintf(stderr, "usage: dpu_apply (--public_key KEY | --allow_unsigned) [--round N] "
                    "[--release_time T] [--now T] [--key_out FILE] [--whole_file "
                    "signed|always|never] [--in_place [--sector_size N]] BASE PATCH OUT\n");
    return 2;
  }
  if (!with_key && !allow_unsigned)
    return fail("no --public_key: give the device's key, or --allow_unsigned to accept "
                "unsigned patches", NULL);
  if (with_key) trust.public_key = public_key;
  if (allow_unsigned) options |= DPU_ALLOW_UNSIGNED;
  if (strcmp(whole, "always") == 0 || (strcmp(whole, "signed") == 0 && with_key))
    options |= DPU_ALLOW_WHOLE_FILE;
  if (sector_size && !in_place)
    return fail("--sector_size is for --in_place (NOR flash): give both", NULL);
  if (in_place && !same_file(argv[arg], argv[arg + 2]))
    return fail("--in_place patches the model where it lies: OUT must be BASE", argv[arg + 2]);
  if (!in_place && same_file(argv[arg], argv[arg + 2]))
    return fail("OUT is BASE (use --in_place, or write elsewhere)", argv[arg + 2]);
  fs.base = fopen(argv[arg], in_place ? "r+b" : "rb");
  if (!fs.base) return fail("cannot open", argv[arg]);
  fs.patch = fopen(argv[arg + 1], "rb");
  if (!fs.patch) return fail("cannot open", argv[arg + 1]);
  patch_size = size_of(fs.patch);
  base_size = size_of(fs.base);
  if (patch_size < 0 || base_size < 0) return fail("cannot read input sizes", NULL);
  if ((unsigned long)patch_size > 0xffffffffUL || (unsigned long)base_size > 0xffffffffUL)
    return fail("inputs of 4 GiB or more are beyond this applier", NULL);
  io.ctx = &fs;
  io.read_patch = read_patch;
  io.read_base = read_base;
  io.write_out = write_out;
  io.verify_signature = NULL;
  io.read_journal = read_journal;
  io.write_journal = write_journal;
#ifdef DPU_WITH_SIGNATURES
  io.verify_signature = verify_ed25519;
#endif

  if (in_place) {
    snprintf(temporary, sizeof(temporary), "%s.journal", argv[arg]);
    fs.journal = fopen(temporary, "r+b");
    if (!fs.journal) fs.journal = fopen(temporary, "w+b");
    if (!fs.journal) return fail("cannot open the journal", temporary);
    fs.out = fs.base;
    if (sector_size) {
      dpu_sectors sectors;
      sectors.sector_size = (uint32_t)sector_size;
      sectors.erase_model = erase_model;
      sectors.erase_journal = erase_journal;
      model_limit = base_size;
      status = dpu_apply_in_sectors(&applier, &io, &sectors, &trust, (uint32_t)patch_size,
                                    (uint32_t)base_size, options);
    } else {
      status = dpu_apply_in_place(&applier, &io, &trust, (uint32_t)patch_size,
                                  (uint32_t)base_size, options);
    }
    fclose(fs.journal);
    if (fclose(fs.base) != 0 && status == DPU_OK) status = DPU_ERR_IO;
    fclose(fs.patch);
    if (status != DPU_OK) return fail(dpu_strerror(status), NULL);
    return report(&applier.info, argv[arg], with_key ? public_key : NULL, key_out);
  }

  if (is_dangling_link(argv[arg + 2]))
    return fail("OUT is a symbolic link to nothing; refusing to create its target",
                argv[arg + 2]);
  resolve(argv[arg + 2], target, sizeof(target));
  snprintf(temporary, sizeof(temporary), "%s.XXXXXX", target);
  fd = mkstemp(temporary);
  if (fd < 0) return fail("cannot create a temporary file beside", target);
  if (stat(target, &existing) == 0) {
    fchmod(fd, existing.st_mode & 07777);
  } else {
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
  }
  fs.out = fdopen(fd, "w+b");
  if (!fs.out) {
    close(fd);
    unlink(temporary);
    return fail("cannot write", temporary);
  }
  started = clock();
  status = DPU_OK;
  for (r = 0; r < repeats && status == DPU_OK; r++) {
    status = dpu_apply(&applier, &io, &trust, (uint32_t)patch_size, (uint32_t)base_size,
                       options);
  }
  if (status == DPU_OK && applier.info.rotated && !key_out) {
    fclose(fs.out);
    fclose(fs.base);
    fclose(fs.patch);
    unlink(temporary);
    return fail("the patch rotates the signing key: give --key_out to keep the new key", NULL);
  }
  if (bench && status == DPU_OK) {
    printf("%.9f\n", (double)(clock() - started) / CLOCKS_PER_SEC / (double)repeats);
  }
  if (status == DPU_OK && (fflush(fs.out) != 0 || fsync(fileno(fs.out)) != 0))
    status = DPU_ERR_IO;
  if (fclose(fs.out) != 0 && status == DPU_OK) status = DPU_ERR_IO;
  fclose(fs.base);
  fclose(fs.patch);
  if (status == DPU_OK && (rename(temporary, target) != 0 || sync_folder(target) != 0)) {
    unlink(temporary);
    return fail("cannot replace", target);
  }
  if (status != DPU_OK) {
    unlink(temporary); /* the only file this run created */
    return fail(dpu_strerror(status), NULL);
  }
  return bench ? 0 : report(&applier.info, target, with_key ? public_key : NULL, key_out);
}
