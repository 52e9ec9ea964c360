/*
 * dpu_patch: applies a DPU model patch (formats 3 to 5, see ../PATCH_FORMAT.md)
 * on a microcontroller.
 *
 * - C99, no dynamic allocation, no recursion, no libc beyond <string.h>.
 * - The patch and the base model are read in small pieces through callbacks
 *   (random access by offset), the result is written sequentially through a
 *   callback, so all three may live in flash, in RAM or behind a file system.
 * - Everything is checked before the first byte is written: the trailer
 *   SHA-256 of the patch, the signature (through a callback, so the firmware
 *   plugs in its own crypto library; a device without a key must say so with
 *   DPU_ALLOW_UNSIGNED), the key id, release time, expiry and round against
 *   the device's trust state (dpu_trust), the SHA-256 of the base, and the
 *   structure of every record.
 * - The header is read once and kept: the signature is checked over those
 *   bytes in RAM (the callback gets them, it never reads the patch), and the
 *   body is hashed on one sequential pass and compared with the body hash the
 *   signed header holds. The round, hashes and sizes used afterwards are the
 *   verified ones, and DPU_OK is returned only when the output hashes to the
 *   signed result, so storage that changes between reads gets a refusal,
 *   never an output other than the signed one (in place, the model is then
 *   neither: see dpu_apply_in_place). A record may write only the data of one of
 *   the base model's weight or bias buffers, which the applier finds in the
 *   base's own flatbuffer (never trusting the patch for it); replacing the
 *   whole file is a record kind of its own, refused unless the caller passes
 *   DPU_ALLOW_WHOLE_FILE. The result's SHA-256 is checked as it is written;
 *   DPU_OK means the output is exactly the signed/declared result.
 *   On any error the output slot must not be used (A/B: keep booting the
 *   old model).
 *
 * In-place mode (dpu_apply_in_place) for devices without room for two model
 * copies: the model is patched where it lies, chunk by chunk, each new chunk
 * first saved in a 296-byte journal (a state area reached through two more
 * callbacks), so that an apply cut off at any moment (power loss, reset)
 * resumes to exactly the result when dpu_apply_in_place is called again.
 *
 * RAM: one dpu_applier (sizeof(dpu_applier) bytes, 1904 on x86-64 with the
 * default DPU_CHUNK of 64, a multiple of 8; 606 of them are the learned
 * probabilities of the adaptive codes of formats 4 and 5, and 512 the column
 * code's counts, two bits for each of DPU_MAX_COLUMNS columns) supplied by
 * the caller, plus stack:
 * at most 1536 bytes on the deepest call chain of dpu_apply,
 * dpu_apply_in_place and dpu_apply_in_sectors (x86-64, gcc -O2: 1512, measured by the tests with
 * -fcallgraph-info=su; the deepest chain is a key rotation's check of the next
 * key), and 1536 for dpu_check_public_key (run when a key is provisioned), not
 * counting what the callbacks themselves use.
 *
 * On a Cortex-M4 (`make lib CROSS=arm-none-eabi-`: arm-none-eabi-gcc 12, -Os
 * -mthumb, linked with --gc-sections into examples/firmware.c, which calls
 * dpu_apply, dpu_apply_in_sectors and dpu_check_public_key): 13504 bytes of
 * code and constants, 1896 bytes of state (the dpu_applier), and at most 1536
 * bytes of stack (measured: 1468), all checked by tests/test_microcontroller.py.
 */
#ifndef DPU_PATCH_H
#define DPU_PATCH_H

#include <stddef.h>
#include <stdint.h>

#ifndef DPU_CHUNK
#define DPU_CHUNK 64u /* bytes of the model processed per step */
#endif

#define DPU_FORMAT_VERSION 5u     /* the newest version read; versions 3 and 4 are read too */
#define DPU_OLDEST_FORMAT_VERSION 3u
/* The longest row a version-5 column code may have: the applier keeps two
 * bits per column (DPU_MAX_COLUMNS / 4 bytes of RAM). */
#define DPU_MAX_COLUMNS 2048u
#define DPU_HEADER_SIZE 156u
#define DPU_SIGNATURE_SIZE 64u
#define DPU_CHECKSUM_SIZE 32u
#define DPU_KEY_ID_SIZE 8u
/* The last round is reserved: no patch may take a device there (it could never
 * be updated again). */
#define DPU_MAX_ROUND 0xfffffffeu
/* An unsigned device takes no patch that advances it by more rounds than this
 * (dpu_trust.max_round_jump = 0 selects it). */
#define DPU_DEFAULT_ROUND_JUMP 16u

typedef enum {
  DPU_OK = 0,
  DPU_ERR_IO,              /* a callback failed */
  DPU_ERR_TRUNCATED,       /* patch size does not match its header */
  DPU_ERR_MAGIC,           /* not a DPU patch */
  DPU_ERR_VERSION,         /* unsupported format version or flags */
  DPU_ERR_CHECKSUM,        /* trailer SHA-256 mismatch: corrupted */
  DPU_ERR_UNSIGNED,        /* a signature is required but the patch has none */
  DPU_ERR_SIGNATURE,       /* the signature callback rejected the patch */
  DPU_ERR_BASE,            /* the model is not the patch's base */
  DPU_ERR_ALREADY_APPLIED, /* the model already is the patch's result */
  DPU_ERR_MALFORMED,       /* a record is out of bounds or badly coded */
  DPU_ERR_RESULT,          /* the output does not hash to the declared result */
  DPU_ERR_ROUND,           /* the patch's round is not newer than the device's */
  DPU_ERR_REGION,          /* a record writes outside the model's weight buffers */
  DPU_ERR_MODEL,           /* the base model is not a valid TFLite flatbuffer */
  DPU_ERR_WHOLE_FILE,      /* a whole-file update, and DPU_ALLOW_WHOLE_FILE is off */
  DPU_ERR_SIZE,            /* in place: the result's size differs from the model's */
  DPU_ERR_KEY,             /* dpu_check_public_key: a malformed or weak key */
  DPU_ERR_KEY_ID,          /* signed by another key (a retired or an unknown one) */
  DPU_ERR_STALE,           /* released before the last update the device applied */
  DPU_ERR_EXPIRED,         /* past its expiry (by the clock, or the last release) */
  DPU_ERR_NO_KEY,          /* no public key, and DPU_ALLOW_UNSIGNED not given */
  DPU_ERR_BODY,            /* the body does not hash to the header's body hash */
  DPU_ERR_ROTATION,        /* a key rotation this device cannot take */
  DPU_ERR_NOT_RAW,         /* the model's weights are compressed, compiled or sparse */
  DPU_ERR_CONFIG           /* a missing callback or a bad sector size (dpu_apply_in_sectors) */
} dpu_status;

/* Options of dpu_apply and dpu_apply_in_place. */
#define DPU_ALLOW_WHOLE_FILE 1u /* accept a patch that replaces the whole model */
#define DPU_ALLOW_UNSIGNED 2u   /* accept patches with no key to check them (opt-in) */

/* What the device trusts and knows, kept by the firmware in persistent storage
 * and updated from dpu_info after DPU_OK (round, release_time, and public_key
 * when info.rotated). */
typedef struct {
  uint32_t round;            /* the round of the model the device holds */
  uint64_t release_time;     /* release time of the last update applied (0: none) */
  uint64_t now;              /* seconds since 1970 from a trusted clock; 0: no clock */
  const uint8_t *public_key; /* the 32-byte key every patch must be signed with;
                                NULL only with DPU_ALLOW_UNSIGNED */
  uint32_t max_round_jump;   /* unsigned devices: rounds one patch may advance (0: default) */
} dpu_trust;

typedef struct {
  void *ctx;
  /* Copy len bytes at offset into buf; return 0 on success. */
  int (*read_patch)(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len);
  int (*read_base)(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len);
  /* Store len bytes at offset of the output; called with increasing offsets. */
  int (*write_out)(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len);
  /* Verify the Ed25519 signature of `message` (the patch header, held in the
   * applier's RAM: never read it from the patch again) under `public_key`;
   * return 0 if valid. Required when dpu_trust.public_key is set. */
  int (*verify_signature)(void *ctx, const uint8_t public_key[32], const uint8_t *message,
                          uint32_t message_length, const uint8_t signature[DPU_SIGNATURE_SIZE]);
  /* In-place mode only: the journal, DPU_JOURNAL_SIZE bytes of persistent
   * storage (erased or garbage the first time is fine), addressed by offset. */
  int (*read_journal)(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len);
  int (*write_journal)(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len);
} dpu_io;

/* NOR flash, for dpu_apply_in_sectors: storage that must be erased (to 0xff),
 * a whole sector at a time, before it can be programmed. */
typedef struct {
  uint32_t sector_size; /* the erase unit: a multiple of DPU_CHUNK, at least 256 */
  /* Erase whole sectors: [offset, offset + len) of the model (offset 0 is the
   * start of a sector) or of the journal; return 0 on success. */
  int (*erase_model)(void *ctx, uint32_t offset, uint32_t len);
  int (*erase_journal)(void *ctx, uint32_t offset, uint32_t len);
} dpu_sectors;

/* The journal of dpu_apply_in_sectors: a copy sector and two log sectors. */
#define DPU_SECTOR_RECORD 96u
#define DPU_SECTOR_JOURNAL_SIZE(sector_size) (3u * (sector_size))

/* Two journal slots written alternately, so a write torn by a power cut always
 * leaves the previous entry intact. */
#define DPU_JOURNAL_SLOT (52u + DPU_CHUNK + 32u)
#define DPU_JOURNAL_SIZE (2u * DPU_JOURNAL_SLOT)

typedef struct {
  uint32_t state[8];
  uint64_t length;
  uint8_t block[64];
  uint32_t used;
} dpu_sha256;

/* What the verified header says, filled in by dpu_apply (also on most errors). */
typedef struct {
  uint32_t round;
  uint32_t model_size; /* the base's size */
  uint32_t result_size;
  uint32_t version;
  uint32_t record_count;
  uint32_t body_length;
  uint32_t body_start; /* offset of the body: the header and its signature before it */
  uint64_t release_time;
  uint64_t expires;    /* 0: never */
  uint8_t signed_patch;
  uint8_t verified;    /* its signature was checked with dpu_trust.public_key */
  uint8_t rotated;     /* it rotates the key: persist next_key after DPU_OK */
  uint8_t key_id[DPU_KEY_ID_SIZE];
  uint8_t base_sha256[32];
  uint8_t result_sha256[32];
  uint8_t body_sha256[32];
  uint8_t next_key[32];
} dpu_info;

/* A reader of one bit stream stored in the patch (LSB first). */
typedef struct {
  uint32_t start, nbits, pos, buf_off, buf_len;
  uint32_t range, code; /* an adaptive stream's range decoder */
  uint8_t buf[16];
} dpu_bits;

/* The learned probabilities of one adaptive ladder code (PATCH_FORMAT.md,
 * "Adaptive codes"): 12-bit probabilities of a zero bit. */
typedef struct {
  uint16_t unary[33];
  uint16_t tree[16][7]; /* classes 16 and up share the last */
} dpu_ladder;

/* All the applier's working memory; the caller owns it (static or stack). */
typedef struct {
  const dpu_io *io;
  uint32_t patch_size;
  dpu_info info;
  dpu_sha256 sha;
  uint8_t chunk[DPU_CHUNK];
  uint32_t body_end;
  uint32_t options;
  dpu_bits positions, values; /* the current record's two streams */
  /* the record being read */
  uint32_t cursor; /* patch offset of the next record header */
  uint32_t next_cursor, records_left, previous_end;
  uint8_t kind, elem_size, coding, rice_k, value_coding, value_k;
  uint32_t rec_offset, count, changed, values_at, done;
  uint32_t element, position, element_bytes_done;
  int64_t previous;
  uint8_t value[8];
  uint64_t zigzag;     /* the current element's decoded delta */
  dpu_ladder position_model, value_model; /* adaptive codes of the current record */
  uint16_t sign_model[2];
  uint8_t last_sign;
  /* version 5: the column code's contexts, row length, place in its scan and
   * per-column counts of changes (two bits each); the saturating values'
   * "at the end of the range" bits */
  uint16_t column_model[9];
  uint32_t row, scan, column, in_row;
  uint8_t columns[DPU_MAX_COLUMNS / 4];
  uint16_t end_model[4];
  uint8_t last_end;
  uint8_t value_ready; /* a->value holds the current element's new bytes */
  uint8_t skip;        /* decode without reading the base or writing (resuming) */
  uint8_t touched;     /* the current chunk received a change */
  uint8_t whole_file;  /* the patch is one whole-file record */
  uint8_t patch_id[32];
  uint32_t journal_seq;
  /* a journal slot, a sector-mode record, or a chunk read back (whichever is largest) */
  uint8_t journal[DPU_JOURNAL_SLOT > DPU_SECTOR_RECORD ? DPU_JOURNAL_SLOT : DPU_SECTOR_RECORD];
  /* dpu_apply_in_sectors: the log's current sector (0 or 1) and next free slot */
  uint32_t sector_size, log_slot;
  uint8_t log_sector;
} dpu_applier;

/*
 * Applies the patch to the base model, writing the result through io->write_out.
 * trust: the device's round, last release time, clock and key. A patch must be
 * signed by trust->public_key (its key id and signature), released no earlier
 * than trust->release_time, unexpired by trust->now when it is set, for a round
 * above trust->round (or equal, for a patch that leaves the model as it is: a
 * key rotation) and below 2^32 - 1; without a key, within max_round_jump.
 * options: DPU_ALLOW_WHOLE_FILE to accept whole-file updates (whose result may
 * differ from the base in size: info.result_size bytes are written);
 * DPU_ALLOW_UNSIGNED to run without a key at all.
 * After DPU_OK the firmware stores info.round and info.release_time, and
 * info.next_key as its key when info.rotated, with the new model.
 */
dpu_status dpu_apply(dpu_applier *applier, const dpu_io *io, const dpu_trust *trust,
                     uint32_t patch_size, uint32_t base_size, uint32_t options);

/*
 * Applies the patch to the model in place (io->read_base and io->write_out both
 * address the model). Call it again with the same patch after an interruption:
 * it resumes from the journal. Returns DPU_ERR_ALREADY_APPLIED when the journal
 * or the model shows the patch complete. Element records must be aligned to
 * their element size (the format requires it), so no element straddles a chunk.
 * The patch must lie in storage that does not change during the apply (the
 * device's own flash, written before the call): a change is caught by the
 * body or result hash, but chunks already written cannot be taken back.
 */
dpu_status dpu_apply_in_place(dpu_applier *applier, const dpu_io *io, const dpu_trust *trust,
                              uint32_t patch_size, uint32_t model_size, uint32_t options);

/*
 * dpu_apply_in_place for NOR flash, where a write needs its sector erased
 * first: the model is rewritten a sector at a time, each new sector built in
 * the journal's copy sector (programmed a chunk at a time as it is decoded,
 * so RAM does not grow with the sector size), recorded, then erased and
 * programmed into the model. The journal (io->read_journal/write_journal,
 * DPU_SECTOR_JOURNAL_SIZE(sector_size) bytes, sector-aligned, erased or
 * garbage the first time) holds the copy sector and two log sectors that take
 * 96-byte records in turn. Nothing is ever programmed that was not erased
 * since, and only sectors that change are erased: a model sector once per
 * patch, the copy sector once per changed model sector. Call it again with the
 * same patch after an interruption: it resumes (DPU_ERR_ALREADY_APPLIED when
 * done). The model's flash starts on a sector boundary and nothing else
 * shares its last sector (which is erased whole). Same checks, same patch
 * rules and same results as dpu_apply_in_place.
 */
dpu_status dpu_apply_in_sectors(dpu_applier *applier, const dpu_io *io,
                                const dpu_sectors *sectors, const dpu_trust *trust,
                                uint32_t patch_size, uint32_t model_size, uint32_t options);

/*
 * Checks an Ed25519 public key before the firmware trusts it: DPU_ERR_KEY when it
 * is not the canonical encoding of a curve point, or is a point of small order
 * (with the identity as key, R = identity and S = 0 verify for every message).
 * Run it when a key is provisioned; it needs no applier state.
 */
dpu_status dpu_check_public_key(const uint8_t key[32]);

const char *dpu_strerror(dpu_status status);

void dpu_sha256_init(dpu_sha256 *sha);
void dpu_sha256_update(dpu_sha256 *sha, const uint8_t *data, size_t len);
void dpu_sha256_final(dpu_sha256 *sha, uint8_t digest[32]);

#endif /* DPU_PATCH_H */
