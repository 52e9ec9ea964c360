/* dpu_patch.c: see dpu_patch.h. Format: ../PATCH_FORMAT.md (v1). */
#include "dpu_patch.h"

#include <string.h>

#define KIND_ELEMENTS 1u
#define KIND_RAW 2u
#define CODING_RICE 0u
#define CODING_BITMAP 1u
#define CODING_ALL 2u
#define ELEMENTS_HEADER 36u
#define VALUES_RAW 0u
#define VALUES_DELTA 1u
#define RAW_HEADER 16u
#define MAX_RECORDS (1u << 20)
#define FLAG_SIGNED 1u
#define JOURNAL_NONE 0u
#define JOURNAL_IN_PROGRESS 1u
#define JOURNAL_DONE 2u

/* Elements are at most 8 bytes and aligned to their size, so a chunk that is a
 * multiple of 8 never splits one: each chunk's new bytes depend on its old
 * bytes alone, which is what makes resuming an in-place apply exact. */
typedef char dpu_chunk_is_a_multiple_of_8[(DPU_CHUNK % 8u == 0u && DPU_CHUNK >= 8u) ? 1 : -1];

/* ---------------------------------------------------------------- SHA-256 */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t state[8], const uint8_t block[64]) {
  uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
  unsigned i;
  for (i = 0; i < 16; i++) {
    w[i] = ((uint32_t)block[4 * i] << 24) | ((uint32_t)block[4 * i + 1] << 16) |
           ((uint32_t)block[4 * i + 2] << 8) | (uint32_t)block[4 * i + 3];
  }
  for (i = 16; i < 64; i++) {
    uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = state[0]; b = state[1]; c = state[2]; d = state[3];
  e = state[4]; f = state[5]; g = state[6]; h = state[7];
  for (i = 0; i < 64; i++) {
    t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g; g = f; f = e; e = d + t1;
    d = c; c = b; b = a; a = t1 + t2;
  }
  state[0] += a; state[1] += b; state[2] += c; state[3] += d;
  state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

void dpu_sha256_init(dpu_sha256 *sha) {
  static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(sha->state, initial, sizeof(initial));
  sha->length = 0;
  sha->used = 0;
}

void dpu_sha256_update(dpu_sha256 *sha, const uint8_t *data, size_t len) {
  sha->length += len;
  while (len > 0) {
    size_t take = 64 - sha->used;
    if (take > len) take = len;
    memcpy(sha->block + sha->used, data, take);
    sha->used += (uint32_t)take;
    data += take;
    len -= take;
    if (sha->used == 64) {
      sha256_block(sha->state, sha->block);
      sha->used = 0;
    }
  }
}

void dpu_sha256_final(dpu_sha256 *sha, uint8_t digest[32]) {
  uint64_t bits = sha->length * 8;
  uint8_t pad = 0x80;
  uint8_t length[8];
  unsigned i;
  dpu_sha256_update(sha, &pad, 1);
  pad = 0;
  while (sha->used != 56) dpu_sha256_update(sha, &pad, 1);
  for (i = 0; i < 8; i++) length[i] = (uint8_t)(bits >> (56 - 8 * i));
  dpu_sha256_update(sha, length, 8);
  for (i = 0; i < 32; i++) digest[i] = (uint8_t)(sha->state[i / 4] >> (24 - 8 * (i % 4)));
}

/* ------------------------------------------------------------- helpers */

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

static uint64_t le64(const uint8_t *p) {
  return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32);
}

static uint8_t element_size(uint8_t type) {
  switch (type) {
    case 0: return 4; /* float32 */
    case 2: return 4; /* int32 */
    case 3: return 1; /* uint8 */
    case 4: return 8; /* int64 */
    case 7: return 2; /* int16 */
    case 9: return 1; /* int8 */
    default: return 0;
  }
}

static dpu_status read_patch(dpu_applier *a, uint32_t offset, uint8_t *buf, uint32_t len) {
  if ((uint64_t)offset + len > a->patch_size) return DPU_ERR_MALFORMED;
  return a->io->read_patch(a->io->ctx, offset, buf, len) ? DPU_ERR_IO : DPU_OK;
}

/* Hashes `len` bytes of the patch or of the base, from `offset`, into a->sha. */
static dpu_status hash_range(dpu_applier *a, int base, uint32_t offset, uint32_t len) {
  while (len > 0) {
    uint32_t take = len < DPU_CHUNK ? len : DPU_CHUNK;
    int failed = base ? a->io->read_base(a->io->ctx, offset, a->chunk, take)
                      : a->io->read_patch(a->io->ctx, offset, a->chunk, take);
    if (failed) return DPU_ERR_IO;
    dpu_sha256_update(&a->sha, a->chunk, take);
    offset += take;
    len -= take;
  }
  return DPU_OK;
}

/* ---------------------------------------------------------- bit reader */

static void bits_open(dpu_bits *r, uint32_t start, uint32_t bytes) {
  r->start = start;
  r->nbits = bytes * 8;
  r->pos = 0;
  r->buf_off = 0;
  r->buf_len = 0;
}

static dpu_status read_bit(dpu_applier *a, dpu_bits *r, uint32_t *bit) {
  uint32_t byte;
  if (r->pos >= r->nbits) return DPU_ERR_MALFORMED;
  byte = r->start + (r->pos >> 3);
  if (byte < r->buf_off || byte >= r->buf_off + r->buf_len) {
    uint32_t end = r->start + r->nbits / 8;
    uint32_t take = end - byte < sizeof(r->buf) ? end - byte : (uint32_t)sizeof(r->buf);
    dpu_status s = read_patch(a, byte, r->buf, take);
    if (s != DPU_OK) return s;
    r->buf_off = byte;
    r->buf_len = take;
  }
  *bit = (r->buf[byte - r->buf_off] >> (r->pos & 7)) & 1u;
  r->pos++;
  return DPU_OK;
}

/* One Rice code: (v >> k) ones, a zero, the k low bits of v; v must be < limit. */
static dpu_status read_rice(dpu_applier *a, dpu_bits *r, uint8_t k, uint64_t limit,
                            uint64_t *value) {
  uint64_t quotient = 0, remainder = 0;
  uint32_t bit = 0, j;
  dpu_status s;
  for (;;) {
    if ((s = read_bit(a, r, &bit)) != DPU_OK) return s;
    if (!bit) break;
    if (++quotient > (limit >> k)) return DPU_ERR_MALFORMED;
  }
  for (j = 0; j < k; j++) {
    if ((s = read_bit(a, r, &bit)) != DPU_OK) return s;
    remainder |= (uint64_t)bit << j;
  }
  *value = (quotient << k) | remainder;
  return *value < limit ? DPU_OK : DPU_ERR_MALFORMED;
}

/* Decodes the next changed position of the current record into a->position. */
static dpu_status next_position(dpu_applier *a) {
  uint32_t bit = 0;
  uint64_t gap, next;
  dpu_status s;
  if (a->coding == CODING_ALL) {
    a->position = a->element;
    return DPU_OK;
  }
  if (a->coding == CODING_BITMAP) {
    do {
      if (a->positions.pos >= a->count) return DPU_ERR_MALFORMED;
      a->position = a->positions.pos;
      if ((s = read_bit(a, &a->positions, &bit)) != DPU_OK) return s;
    } while (!bit);
    return DPU_OK;
  }
  if ((s = read_rice(a, &a->positions, a->rice_k, a->count, &gap)) != DPU_OK) return s;
  next = (uint64_t)(a->previous + 1) + gap;
  if (next >= a->count) return DPU_ERR_MALFORMED;
  a->previous = (int64_t)next;
  a->position = (uint32_t)next;
  return DPU_OK;
}

/* All ones over the current element's width (at most 4 bytes for deltas). */
static uint64_t value_mask(const dpu_applier *a) {
  return (a->elem_size == 4) ? 0xffffffffu : ((uint64_t)1 << (8 * a->elem_size)) - 1;
}

/* Decodes the current element's value code, in stream order: a delta is kept
 * in a->zigzag until the element's chunk is written (see materialize). */
static dpu_status next_value(dpu_applier *a) {
  a->value_ready = 0;
  if (a->value_coding == VALUES_RAW) return DPU_OK;
  return read_rice(a, &a->values, a->value_k, value_mask(a) + 1, &a->zigzag);
}

/* The current element's new bytes: raw from the patch, or the base's value plus
 * the delta modulo the element width. */
static dpu_status materialize(dpu_applier *a) {
  uint8_t old[8];
  uint64_t mask = value_mask(a), step, value = 0;
  unsigned i;
  if (a->value_coding == VALUES_RAW)
    return read_patch(a, a->values_at + a->element * a->elem_size, a->value, a->elem_size);
  step = (a->zigzag & 1u) ? (mask - ((a->zigzag + 1) >> 1) + 1) & mask : a->zigzag >> 1;
  if (a->io->read_base(a->io->ctx, a->rec_offset + a->position * a->elem_size, old,
                       a->elem_size))
    return DPU_ERR_IO;
  for (i = 0; i < a->elem_size; i++) value |= (uint64_t)old[i] << (8 * i);
  value = (value + step) & mask;
  for (i = 0; i < a->elem_size; i++) a->value[i] = (uint8_t)(value >> (8 * i));
  return DPU_OK;
}

/* Bits left after a stream's last code must be padding: zero, under a byte for
 * Rice codes; a bitmap must mark exactly `changed` elements. */
static dpu_status check_stream_end(dpu_applier *a, dpu_bits *r, int rice) {
  uint32_t bit = 0;
  dpu_status s;
  if (rice && r->nbits - r->pos >= 8) return DPU_ERR_MALFORMED;
  while (r->pos < r->nbits) {
    if ((s = read_bit(a, r, &bit)) != DPU_OK) return s;
    if (bit) return DPU_ERR_MALFORMED;
  }
  return DPU_OK;
}

/* ------------------------------------------------------------- records */

/* Reads and checks the record header at a->cursor. */
static dpu_status load_record(dpu_applier *a) {
  uint8_t h[ELEMENTS_HEADER];
  uint64_t offset, span, end;
  dpu_status s;
  if ((uint64_t)a->cursor + 1 > a->body_end) return DPU_ERR_MALFORMED;
  if ((s = read_patch(a, a->cursor, h, 1)) != DPU_OK) return s;
  a->kind = h[0];
  if (a->kind == KIND_RAW) {
    if ((uint64_t)a->cursor + RAW_HEADER > a->body_end) return DPU_ERR_MALFORMED;
    if ((s = read_patch(a, a->cursor, h, RAW_HEADER)) != DPU_OK) return s;
    offset = le64(h + 4);
    a->count = le32(h + 12);
    a->elem_size = 1;
    a->changed = a->count;
    a->values_at = a->cursor + RAW_HEADER;
    span = a->count;
    end = (uint64_t)a->values_at + a->count;
  } else if (a->kind == KIND_ELEMENTS) {
    uint32_t position_bytes, value_bytes;
    if ((uint64_t)a->cursor + ELEMENTS_HEADER > a->body_end) return DPU_ERR_MALFORMED;
    if ((s = read_patch(a, a->cursor, h, ELEMENTS_HEADER)) != DPU_OK) return s;
    a->elem_size = element_size(h[1]);
    a->coding = h[2];
    a->rice_k = h[3];
    a->value_coding = h[4];
    a->value_k = h[5];
    offset = le64(h + 12);
    a->count = le32(h + 20);
    a->changed = le32(h + 24);
    position_bytes = le32(h + 28);
    value_bytes = le32(h + 32);
    if (a->elem_size == 0 || a->coding > CODING_ALL || a->rice_k > 31 || a->changed == 0 ||
        a->changed > a->count || a->value_k > 31 || h[6] != 0 || h[7] != 0)
      return DPU_ERR_MALFORMED;
    if (a->coding == CODING_ALL && (a->changed != a->count || position_bytes != 0))
      return DPU_ERR_MALFORMED;
    if (a->coding == CODING_BITMAP && position_bytes != a->count / 8 + (a->count % 8 != 0))
      return DPU_ERR_MALFORMED;
    if (a->value_coding == VALUES_RAW) {
      if ((uint64_t)value_bytes != (uint64_t)a->changed * a->elem_size) return DPU_ERR_MALFORMED;
    } else if (a->value_coding != VALUES_DELTA || a->elem_size > 4) {
      return DPU_ERR_MALFORMED;
    }
    if (position_bytes > 0x1fffffffu || value_bytes > 0x1fffffffu) return DPU_ERR_MALFORMED;
    bits_open(&a->positions, a->cursor + ELEMENTS_HEADER, position_bytes);
    a->values_at = a->cursor + ELEMENTS_HEADER + position_bytes;
    bits_open(&a->values, a->values_at, value_bytes);
    a->previous = -1;
    span = (uint64_t)a->count * a->elem_size;
    end = (uint64_t)a->values_at + value_bytes;
  } else {
    return DPU_ERR_MALFORMED;
  }
  if (end > a->body_end || offset < a->previous_end || offset + span > a->info.model_size ||
      offset % a->elem_size != 0)
    return DPU_ERR_MALFORMED;
  a->rec_offset = (uint32_t)offset;
  a->previous_end = (uint32_t)(offset + span);
  a->next_cursor = (uint32_t)end;
  a->element = 0;
  a->done = 0;
  return DPU_OK;
}

/* Checks every record without writing anything. */
static dpu_status validate_records(dpu_applier *a) {
  uint32_t r;
  dpu_status s;
  a->cursor = DPU_HEADER_SIZE;
  a->previous_end = 0;
  for (r = 0; r < a->info.record_count; r++) {
    if ((s = load_record(a)) != DPU_OK) return s;
    if (a->kind == KIND_ELEMENTS) {
      for (a->element = 0; a->element < a->changed; a->element++) {
        if ((s = next_position(a)) != DPU_OK) return s;
        if ((s = next_value(a)) != DPU_OK) return s;
      }
      if (a->coding != CODING_ALL &&
          (s = check_stream_end(a, &a->positions, a->coding == CODING_RICE)) != DPU_OK)
        return s;
      if (a->value_coding == VALUES_DELTA && (s = check_stream_end(a, &a->values, 1)) != DPU_OK)
        return s;
    }
    a->cursor = a->next_cursor;
  }
  return a->cursor == a->body_end ? DPU_OK : DPU_ERR_MALFORMED;
}

/* Positions the applier on the first change of the record at a->cursor. */
static dpu_status start_record(dpu_applier *a) {
  dpu_status s = load_record(a);
  if (s != DPU_OK || a->kind == KIND_RAW) return s;
  if ((s = next_position(a)) != DPU_OK) return s;
  a->element_bytes_done = 0;
  return next_value(a);
}

/* Writes into a->chunk every change that falls in [start, start + len); in skip
 * mode only advances the decoders past them. */
static dpu_status apply_to_chunk(dpu_applier *a, uint32_t start, uint32_t len) {
  uint64_t end = (uint64_t)start + len;
  dpu_status s;
  while (a->records_left > 0) {
    if (a->kind == KIND_RAW) {
      uint32_t from = a->rec_offset + a->done, take;
      if (from >= end) return DPU_OK;
      take = (uint32_t)((uint64_t)a->rec_offset + a->count < end ? a->rec_offset + a->count - from
                                                                : end - from);
      if (!a->skip) {
        if ((s = read_patch(a, a->values_at + a->done, a->chunk + (from - start), take)) != DPU_OK)
          return s;
        a->touched = 1;
      }
      a->done += take;
      if (a->done < a->count) return DPU_OK;
    } else {
      uint64_t at = (uint64_t)a->rec_offset + (uint64_t)a->position * a->elem_size +
                    a->element_bytes_done;
      if (at >= end) return DPU_OK;
      if (!a->skip && !a->value_ready) {
        if ((s = materialize(a)) != DPU_OK) return s;
        a->value_ready = 1;
      }
      while (a->element_bytes_done < a->elem_size && at < end) {
        if (!a->skip) {
          a->chunk[at - start] = a->value[a->element_bytes_done];
          a->touched = 1;
        }
        a->element_bytes_done++;
        at++;
      }
      if (a->element_bytes_done < a->elem_size) return DPU_OK;
      if (++a->element < a->changed) {
        if ((s = next_position(a)) != DPU_OK) return s;
        a->element_bytes_done = 0;
        if ((s = next_value(a)) != DPU_OK) return s;
        continue;
      }
    }
    /* this record is done: move on */
    a->cursor = a->next_cursor;
    if (--a->records_left > 0 && (s = start_record(a)) != DPU_OK) return s;
  }
  return DPU_OK;
}

/* ---------------------------------------------------------------- apply */

/* Steps 1-2 of the format's checks and the round: everything that needs only
 * the patch. Leaves a->info filled in and a->patch_id = the patch's checksum. */
static dpu_status open_patch(dpu_applier *a, const dpu_io *io, uint32_t patch_size,
                             uint32_t min_round) {
  uint8_t h[DPU_HEADER_SIZE];
  uint8_t digest[32];
  uint64_t declared, size;
  uint32_t flags;
  dpu_status s;

  memset(a, 0, sizeof(*a));
  a->io = io;
  a->patch_size = patch_size;
  if (patch_size < DPU_HEADER_SIZE + DPU_CHECKSUM_SIZE) return DPU_ERR_TRUNCATED;
  if ((s = read_patch(a, 0, h, DPU_HEADER_SIZE)) != DPU_OK) return s;
  if (memcmp(h, "DPUP", 4) != 0) return DPU_ERR_MAGIC;
  flags = (uint32_t)h[6] | ((uint32_t)h[7] << 8);
  if (h[4] != 1 || h[5] != 0) return DPU_ERR_VERSION;
  a->info.round = le32(h + 8);
  size = le64(h + 12);
  a->info.record_count = le32(h + 92);
  a->info.body_length = le32(h + 96);
  a->info.signed_patch = (uint8_t)(flags & FLAG_SIGNED);
  memcpy(a->info.base_sha256, h + 28, 32);
  memcpy(a->info.result_sha256, h + 60, 32);
  declared = (uint64_t)DPU_HEADER_SIZE + a->info.body_length +
             (a->info.signed_patch ? DPU_SIGNATURE_SIZE : 0) + DPU_CHECKSUM_SIZE;
  if (declared != patch_size) return DPU_ERR_TRUNCATED;

  /* the patch is intact */
  dpu_sha256_init(&a->sha);
  if ((s = hash_range(a, 0, 0, patch_size - DPU_CHECKSUM_SIZE)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if ((s = read_patch(a, patch_size - DPU_CHECKSUM_SIZE, a->patch_id, 32)) != DPU_OK) return s;
  if (memcmp(digest, a->patch_id, 32) != 0) return DPU_ERR_CHECKSUM;
  if (flags & ~FLAG_SIGNED) return DPU_ERR_VERSION;
  if (size != le64(h + 20) || size > 0xffffffffu || a->info.record_count > MAX_RECORDS)
    return DPU_ERR_MALFORMED;
  a->info.model_size = (uint32_t)size;
  a->body_end = DPU_HEADER_SIZE + a->info.body_length;

  /* it comes from the key holder */
  if (io->verify_signature) {
    uint8_t signature[DPU_SIGNATURE_SIZE];
    if (!a->info.signed_patch) return DPU_ERR_UNSIGNED;
    if ((s = read_patch(a, a->body_end, signature, DPU_SIGNATURE_SIZE)) != DPU_OK) return s;
    if (io->verify_signature(io->ctx, a->body_end, signature) != 0) return DPU_ERR_SIGNATURE;
  }
  if (a->info.round < min_round) return DPU_ERR_ROUND;
  return DPU_OK;
}

/* The model (through read_base) hashes to the patch's base, or says why not. */
static dpu_status check_base(dpu_applier *a, uint32_t base_size) {
  uint8_t digest[32];
  dpu_status s;
  if (a->info.model_size != base_size) return DPU_ERR_BASE;
  dpu_sha256_init(&a->sha);
  if ((s = hash_range(a, 1, 0, base_size)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if (memcmp(digest, a->info.base_sha256, 32) != 0)
    return memcmp(digest, a->info.result_sha256, 32) == 0 ? DPU_ERR_ALREADY_APPLIED
                                                           : DPU_ERR_BASE;
  return DPU_OK;
}

static dpu_status begin_writing(dpu_applier *a) {
  a->cursor = DPU_HEADER_SIZE;
  a->previous_end = 0;
  a->records_left = a->info.record_count;
  return a->records_left > 0 ? start_record(a) : DPU_OK;
}

dpu_status dpu_apply(dpu_applier *a, const dpu_io *io, uint32_t patch_size, uint32_t base_size,
                     uint32_t min_round) {
  uint8_t digest[32];
  uint32_t out;
  dpu_status s;
  if ((s = open_patch(a, io, patch_size, min_round)) != DPU_OK) return s;
  if ((s = check_base(a, base_size)) != DPU_OK) return s;
  if ((s = validate_records(a)) != DPU_OK) return s;

  /* write base + changes, hashing what is written */
  if ((s = begin_writing(a)) != DPU_OK) return s;
  dpu_sha256_init(&a->sha);
  for (out = 0; out < base_size;) {
    uint32_t take = base_size - out < DPU_CHUNK ? base_size - out : DPU_CHUNK;
    if (io->read_base(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
    if ((s = apply_to_chunk(a, out, take)) != DPU_OK) return s;
    dpu_sha256_update(&a->sha, a->chunk, take);
    if (io->write_out(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
    out += take;
  }
  dpu_sha256_final(&a->sha, digest);
  return memcmp(digest, a->info.result_sha256, 32) == 0 ? DPU_OK : DPU_ERR_RESULT;
}

/* ------------------------------------------------------------- in place */

/* Journal slot layout: "DPUJ", patch id (32), sequence u32, phase u32, chunk
 * offset u32, chunk length u32, chunk bytes (DPU_CHUNK), SHA-256 of all the
 * preceding bytes. Entry n goes to slot n % 2. */
static void put_le32(uint8_t *p, uint32_t v) {
  unsigned i;
  for (i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static dpu_status write_journal(dpu_applier *a, uint32_t phase, uint32_t offset, uint32_t len) {
  uint8_t *j = a->journal;
  dpu_sha256 sha;
  uint32_t seq = ++a->journal_seq;
  memcpy(j, "DPUJ", 4);
  memcpy(j + 4, a->patch_id, 32);
  put_le32(j + 36, seq);
  put_le32(j + 40, phase);
  put_le32(j + 44, offset);
  put_le32(j + 48, len);
  memset(j + 52, 0, DPU_CHUNK);
  if (len) memcpy(j + 52, a->chunk, len);
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, j, 52 + DPU_CHUNK);
  dpu_sha256_final(&sha, j + 52 + DPU_CHUNK);
  return a->io->write_journal(a->io->ctx, (seq & 1u) * DPU_JOURNAL_SLOT, j, DPU_JOURNAL_SLOT)
             ? DPU_ERR_IO
             : DPU_OK;
}

/* Reads one slot into a->journal; returns its sequence number, 0 if the slot is
 * blank, torn or for another patch. */
static dpu_status read_slot(dpu_applier *a, uint32_t slot, uint32_t *seq) {
  uint8_t *j = a->journal;
  uint8_t digest[32];
  dpu_sha256 sha;
  *seq = 0;
  if (a->io->read_journal(a->io->ctx, slot * DPU_JOURNAL_SLOT, j, DPU_JOURNAL_SLOT))
    return DPU_ERR_IO;
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, j, 52 + DPU_CHUNK);
  dpu_sha256_final(&sha, digest);
  if (memcmp(j, "DPUJ", 4) == 0 && memcmp(digest, j + 52 + DPU_CHUNK, 32) == 0 &&
      memcmp(j + 4, a->patch_id, 32) == 0)
    *seq = le32(j + 36);
  return DPU_OK;
}

/* The newest valid entry for this patch, left in a->journal; its phase is
 * JOURNAL_NONE when neither slot has one. */
static dpu_status read_journal(dpu_applier *a, uint32_t *phase) {
  uint32_t seq0, seq1;
  dpu_status s;
  *phase = JOURNAL_NONE;
  if ((s = read_slot(a, 0, &seq0)) != DPU_OK) return s;
  if ((s = read_slot(a, 1, &seq1)) != DPU_OK) return s;
  if (seq0 == 0 && seq1 == 0) return DPU_OK;
  if (seq0 > seq1 && (s = read_slot(a, 0, &seq0)) != DPU_OK) return s;
  a->journal_seq = seq0 > seq1 ? seq0 : seq1;
  *phase = le32(a->journal + 40);
  if (*phase != JOURNAL_IN_PROGRESS && *phase != JOURNAL_DONE) *phase = JOURNAL_NONE;
  return DPU_OK;
}

dpu_status dpu_apply_in_place(dpu_applier *a, const dpu_io *io, uint32_t patch_size,
                              uint32_t model_size, uint32_t min_round) {
  uint8_t digest[32];
  uint32_t phase, out, resume = 0;
  dpu_status s;
  if ((s = open_patch(a, io, patch_size, min_round)) != DPU_OK) return s;
  if (!io->read_journal || !io->write_journal) return DPU_ERR_IO;
  if (a->info.model_size != model_size) return DPU_ERR_BASE;
  if ((s = read_journal(a, &phase)) != DPU_OK) return s;
  if (phase == JOURNAL_DONE) return DPU_ERR_ALREADY_APPLIED;
  /* A fresh start checks the base; a resumed one cannot (the model is half
   * new) and relies on the journal naming this very patch. */
  if (phase == JOURNAL_NONE && (s = check_base(a, model_size)) != DPU_OK) return s;
  if ((s = validate_records(a)) != DPU_OK) return s;
  if (phase == JOURNAL_NONE) {
    if ((s = write_journal(a, JOURNAL_IN_PROGRESS, 0, 0)) != DPU_OK) return s;
  } else {
    uint32_t offset = le32(a->journal + 44), len = le32(a->journal + 48);
    if (len > DPU_CHUNK || offset % DPU_CHUNK != 0 || (uint64_t)offset + len > model_size)
      return DPU_ERR_MALFORMED;
    if (len) { /* the chunk that may have been cut off: write it again, whole */
      if (io->write_out(io->ctx, offset, a->journal + 52, len)) return DPU_ERR_IO;
      resume = offset + len;
    }
  }
  if ((s = begin_writing(a)) != DPU_OK) return s;
  for (out = 0; out < model_size;) {
    uint32_t take = model_size - out < DPU_CHUNK ? model_size - out : DPU_CHUNK;
    a->skip = out < resume;
    a->touched = 0;
    if (!a->skip && io->read_base(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
    if ((s = apply_to_chunk(a, out, take)) != DPU_OK) return s;
    if (a->touched) {
      if ((s = write_journal(a, JOURNAL_IN_PROGRESS, out, take)) != DPU_OK) return s;
      if (io->write_out(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
    }
    out += take;
  }
  a->skip = 0;
  dpu_sha256_init(&a->sha);
  if ((s = hash_range(a, 1, 0, model_size)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if (memcmp(digest, a->info.result_sha256, 32) != 0) return DPU_ERR_RESULT;
  return write_journal(a, JOURNAL_DONE, 0, 0);
}

const char *dpu_strerror(dpu_status status) {
  switch (status) {
    case DPU_OK: return "ok";
    case DPU_ERR_IO: return "read or write callback failed";
    case DPU_ERR_TRUNCATED: return "patch is truncated or extended (size does not match its header)";
    case DPU_ERR_MAGIC: return "not a DPU patch (bad magic)";
    case DPU_ERR_VERSION: return "unsupported patch format version or flags";
    case DPU_ERR_CHECKSUM: return "patch checksum mismatch (corrupted in transit)";
    case DPU_ERR_UNSIGNED: return "patch is not signed, but a signature is required";
    case DPU_ERR_SIGNATURE: return "patch signature is not valid";
    case DPU_ERR_BASE: return "patch is for another model";
    case DPU_ERR_ALREADY_APPLIED: return "patch is already applied: the model is its result";
    case DPU_ERR_MALFORMED: return "patch has a malformed record";
    case DPU_ERR_RESULT: return "patched model does not match the patch's result hash";
    case DPU_ERR_ROUND: return "patch round is not newer than the device's model";
  }
  return "unknown error";
}
