/* dpu_patch.c: see dpu_patch.h. Format: ../PATCH_FORMAT.md (versions 3 to 5). */
#include "dpu_patch.h"

#include <string.h>

#define KIND_ELEMENTS 1u
#define KIND_WHOLE_FILE 3u
#define KIND_ROTATION 4u
#define KIND_COMPACT 5u
#define ROTATION_HEADER 40u
#define CODING_RICE 0u
#define CODING_BITMAP 1u
#define CODING_ALL 2u
#define CODING_ADAPTIVE 3u
#define CODING_COLUMNS 4u
#define ELEMENTS_HEADER 36u
#define COMPACT_FIXED 6u   /* then four varints of at most 5 bytes */
#define COMPACT_SMALLEST 10u
#define WHOLE_FILE_HEADER 12u
#define VALUES_RAW 0u
#define VALUES_DELTA 1u
#define VALUES_ADAPTIVE 2u
#define VALUES_SATURATING 3u
#define TYPE_INT8 9u
#define INT8_END 127u
#define PROBABILITY_BITS 12u
#define PROBABILITY_HALF 2048u
#define ADAPT_SHIFT 5u
#define RANGE_TOP (1u << 24)
#define TREE_NODES 7u
#define TREES 16u
#define COUNT_CAP 2u /* the column code counts changes up to two */
#define MAX_RECORDS (1u << 20)
#define FLAG_SIGNED 1u
#define JOURNAL_NONE 0u
#define JOURNAL_IN_PROGRESS 1u
#define JOURNAL_DONE 2u

/* TFLite builtin operators whose inputs 1 (weights) and 2 (bias) a patch may
 * rewrite, and schema field numbers (a field's vtable slot is 4 + 2 * number). */
#define OP_CONV_2D 3
#define OP_DEPTHWISE_CONV_2D 4
#define OP_FULLY_CONNECTED 9
#define MODEL_OPERATOR_CODES 1u
#define MODEL_SUBGRAPHS 2u
#define MODEL_BUFFERS 4u
#define MODEL_METADATA 6u
#define METADATA_NAME 0u
#define CODE_CUSTOM 1u
#define TENSOR_SPARSITY 6u
#define SUBGRAPH_TENSORS 0u
#define SUBGRAPH_INPUTS 1u
#define SUBGRAPH_OUTPUTS 2u
#define SUBGRAPH_OPERATORS 3u
#define TENSOR_TYPE 1u
#define TENSOR_BUFFER 2u
#define OPERATOR_OPCODE 0u
#define OPERATOR_INPUTS 1u
#define OPERATOR_OUTPUTS 2u
#define OPERATOR_INTERMEDIATES 8u
#define CODE_DEPRECATED 0u
#define CODE_BUILTIN 3u
#define BUFFER_DATA 0u
#define BUFFER_OFFSET 1u
#define BUFFER_SIZE 2u

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

/* Every read of the patch is bounded by its size, computed without overflow. */
static dpu_status read_patch(dpu_applier *a, uint32_t offset, uint8_t *buf, uint32_t len) {
  if ((uint64_t)offset + len > a->patch_size) return DPU_ERR_MALFORMED;
  return a->io->read_patch(a->io->ctx, offset, buf, len) ? DPU_ERR_IO : DPU_OK;
}

/* Hashes `len` bytes of the base, from `offset`, into a->sha. */
static dpu_status hash_base(dpu_applier *a, uint32_t offset, uint32_t len) {
  while (len > 0) {
    uint32_t take = len < DPU_CHUNK ? len : DPU_CHUNK;
    if (a->io->read_base(a->io->ctx, offset, a->chunk, take)) return DPU_ERR_IO;
    dpu_sha256_update(&a->sha, a->chunk, take);
    offset += take;
    len -= take;
  }
  return DPU_OK;
}

/* ------------------------------------------------- the base's weight buffers */

/* A bounds-checked view of the base model's flatbuffer, just enough to find
 * which buffers hold weights. The base's SHA-256 has been checked, but it is
 * read as carefully as the patch: a malformed model is DPU_ERR_MODEL. */

static dpu_status base_read(dpu_applier *a, uint64_t at, uint8_t *buf, uint32_t len) {
  if (at > a->info.model_size || len > a->info.model_size - at) return DPU_ERR_MODEL;
  return a->io->read_base(a->io->ctx, (uint32_t)at, buf, len) ? DPU_ERR_IO : DPU_OK;
}

static dpu_status fb_u32(dpu_applier *a, uint64_t at, uint32_t *value) {
  uint8_t b[4];
  dpu_status s = base_read(a, at, b, 4);
  *value = le32(b);
  return s;
}

/* Absolute position of field `number` of the table at `table`; 0 if absent. */
static dpu_status fb_field(dpu_applier *a, uint32_t table, uint32_t number, uint32_t *at) {
  uint8_t b[2];
  uint32_t back, slot = 4u + 2u * number;
  uint64_t vtable;
  uint16_t vtable_size, relative;
  dpu_status s;
  *at = 0;
  if ((s = fb_u32(a, table, &back)) != DPU_OK) return s;
  /* the vtable sits at table - soffset (a signed 32-bit offset) */
  if (back & 0x80000000u) {
    vtable = (uint64_t)table + (0x100000000ull - back);
  } else {
    if (back > table) return DPU_ERR_MODEL;
    vtable = table - back;
  }
  if ((s = base_read(a, vtable, b, 2)) != DPU_OK) return s;
  vtable_size = (uint16_t)(b[0] | (b[1] << 8));
  if (vtable_size < 4u || slot + 2u > vtable_size) return DPU_OK;
  if ((s = base_read(a, vtable + slot, b, 2)) != DPU_OK) return s;
  relative = (uint16_t)(b[0] | (b[1] << 8));
  if (relative == 0) return DPU_OK;
  if ((uint64_t)table + relative > a->info.model_size) return DPU_ERR_MODEL;
  *at = table + relative;
  return DPU_OK;
}

/* A little-endian scalar field of `width` bytes, `fallback` when absent. */
static dpu_status fb_scalar(dpu_applier *a, uint32_t table, uint32_t number, uint32_t width,
                            uint64_t fallback, uint64_t *value) {
  uint8_t b[8];
  uint32_t at, i;
  dpu_status s;
  *value = fallback;
  if ((s = fb_field(a, table, number, &at)) != DPU_OK || at == 0) return s;
  if ((s = base_read(a, at, b, width)) != DPU_OK) return s;
  *value = 0;
  for (i = 0; i < width; i++) *value |= (uint64_t)b[i] << (8 * i);
  return DPU_OK;
}

/* The first element and length of a vector field of `width`-byte elements. */
static dpu_status fb_vector(dpu_applier *a, uint32_t table, uint32_t number, uint32_t width,
                            uint32_t *start, uint32_t *length) {
  uint32_t at, relative;
  uint64_t vector;
  dpu_status s;
  *start = *length = 0;
  if ((s = fb_field(a, table, number, &at)) != DPU_OK || at == 0) return s;
  if ((s = fb_u32(a, at, &relative)) != DPU_OK) return s;
  vector = (uint64_t)at + relative;
  if ((s = fb_u32(a, vector, length)) != DPU_OK) return s;
  if (vector + 4u + (uint64_t)*length * width > a->info.model_size) return DPU_ERR_MODEL;
  *start = (uint32_t)vector + 4u;
  return DPU_OK;
}

/* The table that entry `index` of a vector of tables points to. */
static dpu_status fb_table(dpu_applier *a, uint32_t start, uint32_t length, uint32_t index,
                           uint32_t *table) {
  uint32_t relative;
  dpu_status s;
  if (index >= length) return DPU_ERR_MODEL;
  if ((s = fb_u32(a, (uint64_t)start + 4u * (uint64_t)index, &relative)) != DPU_OK) return s;
  if ((uint64_t)start + 4u * (uint64_t)index + relative > a->info.model_size) return DPU_ERR_MODEL;
  *table = start + 4u * index + relative;
  return DPU_OK;
}

/* What the record under check is allowed to write: buffer `buffer`, elements of
 * `type`; `used` becomes 1 at the first permitted use. */
typedef struct {
  uint32_t buffer, tensors, tensor_count;
  uint8_t type, used;
} dpu_region_check;

/* Checks the tensors listed in a vector of int32 tensor indices: a tensor stored
 * in the buffer may appear there only as input 1 or 2 of a weight operator
 * (`weight_operator` says whether the list is the inputs of one), with the
 * record's element type. */
static dpu_status check_uses(dpu_applier *a, dpu_region_check *c, uint32_t table,
                             uint32_t number, int weight_operator) {
  uint32_t start, length, j, index, tensor;
  uint64_t buffer, type;
  dpu_status s;
  if ((s = fb_vector(a, table, number, 4, &start, &length)) != DPU_OK) return s;
  for (j = 0; j < length; j++) {
    if ((s = fb_u32(a, (uint64_t)start + 4u * j, &index)) != DPU_OK) return s;
    if (index & 0x80000000u) continue; /* -1: an optional input left out */
    if ((s = fb_table(a, c->tensors, c->tensor_count, index, &tensor)) != DPU_OK) return s;
    if ((s = fb_scalar(a, tensor, TENSOR_BUFFER, 4, 0, &buffer)) != DPU_OK) return s;
    if (buffer != c->buffer) continue;
    if ((s = fb_scalar(a, tensor, TENSOR_TYPE, 1, 0, &type)) != DPU_OK) return s;
    if (!weight_operator || (j != 1u && j != 2u) || type != c->type) return DPU_ERR_REGION;
    if ((s = fb_field(a, tensor, TENSOR_SPARSITY, &index)) != DPU_OK) return s;
    if (index != 0) return DPU_ERR_NOT_RAW; /* the buffer holds only the kept values */
    c->used = 1;
  }
  return DPU_OK;
}

/* Whether the string field `number` of `table` is exactly `expected`. */
static dpu_status fb_string_is(dpu_applier *a, uint32_t table, uint32_t number,
                               const char *expected, int *equal) {
  uint8_t b[24];
  uint32_t start, length, n = (uint32_t)strlen(expected);
  dpu_status s;
  *equal = 0;
  if ((s = fb_vector(a, table, number, 1, &start, &length)) != DPU_OK) return s;
  if (start == 0 || length != n || n > sizeof(b)) return DPU_OK;
  if ((s = base_read(a, start, b, n)) != DPU_OK) return s;
  *equal = memcmp(b, expected, n) == 0;
  return DPU_OK;
}

/* DPU_ERR_NOT_RAW when the model marks its weights as something other than raw
 * tensors: TFLite Micro's lookup-table compression (a COMPRESSION_METADATA
 * entry) or an Edge TPU compiled payload (an edgetpu-custom-op operator). */
static dpu_status check_raw(dpu_applier *a, uint32_t model, uint32_t codes,
                            uint32_t code_count) {
  uint32_t entries, entry_count, i, table;
  int equal;
  dpu_status s;
  if ((s = fb_vector(a, model, MODEL_METADATA, 4, &entries, &entry_count)) != DPU_OK) return s;
  for (i = 0; i < entry_count; i++) {
    if ((s = fb_table(a, entries, entry_count, i, &table)) != DPU_OK) return s;
    if ((s = fb_string_is(a, table, METADATA_NAME, "COMPRESSION_METADATA", &equal)) != DPU_OK)
      return s;
    if (equal) return DPU_ERR_NOT_RAW;
  }
  for (i = 0; i < code_count; i++) {
    if ((s = fb_table(a, codes, code_count, i, &table)) != DPU_OK) return s;
    if ((s = fb_string_is(a, table, CODE_CUSTOM, "edgetpu-custom-op", &equal)) != DPU_OK)
      return s;
    if (equal) return DPU_ERR_NOT_RAW;
  }
  return DPU_OK;
}

/* DPU_OK when buffer `buffer` is a weight or bias buffer of `type` elements
 * (PATCH_FORMAT.md, "Writable buffers"); its data's offset and length go to
 * *offset and *span. */
static dpu_status check_writable(dpu_applier *a, uint32_t buffer, uint8_t type,
                                 uint64_t *offset, uint64_t *span) {
  static const uint32_t not_weights[] = {OPERATOR_OUTPUTS, OPERATOR_INTERMEDIATES};
  uint8_t identifier[4];
  uint32_t model, codes, code_count, graphs, graph_count, ops, op_count, g, o, i, graph, op,
      code, data, data_length, list, list_length;
  uint64_t opcode, deprecated, builtin, external;
  int64_t kind;
  dpu_region_check c;
  dpu_status s;
  if (buffer == 0) return DPU_ERR_REGION;
  if ((s = base_read(a, 4, identifier, 4)) != DPU_OK) return s;
  if (memcmp(identifier, "TFL3", 4) != 0) return DPU_ERR_MODEL;
  c.buffer = buffer;
  c.type = type;
  c.used = 0;
  if ((s = fb_u32(a, 0, &model)) != DPU_OK) return s;
  if ((s = fb_vector(a, model, MODEL_OPERATOR_CODES, 4, &codes, &code_count)) != DPU_OK) return s;
  if ((s = check_raw(a, model, codes, code_count)) != DPU_OK) return s;
  if ((s = fb_vector(a, model, MODEL_SUBGRAPHS, 4, &graphs, &graph_count)) != DPU_OK) return s;
  for (g = 0; g < graph_count; g++) {
    if ((s = fb_table(a, graphs, graph_count, g, &graph)) != DPU_OK) return s;
    if ((s = fb_vector(a, graph, SUBGRAPH_TENSORS, 4, &c.tensors, &c.tensor_count)) != DPU_OK)
      return s;
    if ((s = fb_vector(a, graph, SUBGRAPH_OPERATORS, 4, &ops, &op_count)) != DPU_OK) return s;
    for (o = 0; o < op_count; o++) {
      if ((s = fb_table(a, ops, op_count, o, &op)) != DPU_OK) return s;
      if ((s = fb_scalar(a, op, OPERATOR_OPCODE, 4, 0, &opcode)) != DPU_OK) return s;
      if ((s = fb_table(a, codes, code_count, (uint32_t)opcode, &code)) != DPU_OK) return s;
      if ((s = fb_scalar(a, code, CODE_DEPRECATED, 1, 0, &deprecated)) != DPU_OK) return s;
      if ((s = fb_scalar(a, code, CODE_BUILTIN, 4, 0, &builtin)) != DPU_OK) return s;
      /* the operator is the larger of the two codes, both signed */
      kind = (builtin & 0x80000000u) ? (int64_t)builtin - 0x100000000ll : (int64_t)builtin;
      if (deprecated < 0x80u && (int64_t)deprecated > kind) kind = (int64_t)deprecated;
      if ((s = check_uses(a, &c, op, OPERATOR_INPUTS,
                          kind == OP_CONV_2D || kind == OP_DEPTHWISE_CONV_2D ||
                              kind == OP_FULLY_CONNECTED)) != DPU_OK)
        return s;
      for (i = 0; i < 2; i++)
        if ((s = check_uses(a, &c, op, not_weights[i], 0)) != DPU_OK) return s;
    }
    if ((s = check_uses(a, &c, graph, SUBGRAPH_INPUTS, 0)) != DPU_OK) return s;
    if ((s = check_uses(a, &c, graph, SUBGRAPH_OUTPUTS, 0)) != DPU_OK) return s;
  }
  if (!c.used) return DPU_ERR_REGION;
  if ((s = fb_vector(a, model, MODEL_BUFFERS, 4, &list, &list_length)) != DPU_OK) return s;
  if ((s = fb_table(a, list, list_length, buffer, &data)) != DPU_OK) return s;
  if ((s = fb_scalar(a, data, BUFFER_OFFSET, 8, 0, &external)) != DPU_OK) return s;
  if (external != 0) return DPU_ERR_REGION; /* data past the flatbuffer */
  if ((s = fb_scalar(a, data, BUFFER_SIZE, 8, 0, &external)) != DPU_OK) return s;
  if (external != 0) return DPU_ERR_REGION;
  if ((s = fb_vector(a, data, BUFFER_DATA, 1, &data, &data_length)) != DPU_OK) return s;
  *offset = data;
  *span = data_length;
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

/* ------------------------------------------------------ adaptive codes */

/* The next byte of a byte-aligned stream; running out is malformed. */
static dpu_status read_byte(dpu_applier *a, dpu_bits *r, uint32_t *byte) {
  uint32_t bit = 0, j;
  dpu_status s;
  *byte = 0;
  for (j = 0; j < 8; j++) {
    if ((s = read_bit(a, r, &bit)) != DPU_OK) return s;
    *byte |= bit << j;
  }
  return DPU_OK;
}

/* Starts a range decoder: a zero byte, then the code's first four bytes. */
static dpu_status range_open(dpu_applier *a, dpu_bits *r) {
  uint32_t byte = 0, i;
  dpu_status s;
  if (r->nbits < 40u) return DPU_ERR_MALFORMED;
  if ((s = read_byte(a, r, &byte)) != DPU_OK) return s;
  if (byte != 0) return DPU_ERR_MALFORMED;
  r->code = 0;
  for (i = 0; i < 4; i++) {
    if ((s = read_byte(a, r, &byte)) != DPU_OK) return s;
    r->code = (r->code << 8) | byte;
  }
  r->range = 0xffffffffu;
  return r->code == 0xffffffffu ? DPU_ERR_MALFORMED : DPU_OK;
}

/* One bit at probability *p (of a zero, in 1/4096); *p adapts unless fixed. */
static dpu_status range_bit(dpu_applier *a, dpu_bits *r, uint16_t *p, int fixed,
                            uint32_t *bit) {
  uint32_t prob = fixed ? PROBABILITY_HALF : *p, bound = (r->range >> PROBABILITY_BITS) * prob,
           byte = 0;
  dpu_status s;
  if (r->code < bound) {
    r->range = bound;
    if (!fixed) *p = (uint16_t)(prob + (((1u << PROBABILITY_BITS) - prob) >> ADAPT_SHIFT));
    *bit = 0;
  } else {
    r->code -= bound;
    r->range -= bound;
    if (!fixed) *p = (uint16_t)(prob - (prob >> ADAPT_SHIFT));
    *bit = 1;
  }
  while (r->range < RANGE_TOP) {
    if ((s = read_byte(a, r, &byte)) != DPU_OK) return s;
    r->range <<= 8;
    r->code = (r->code << 8) | byte;
  }
  return DPU_OK;
}

static void ladder_reset(dpu_ladder *m) {
  unsigned i, j;
  for (i = 0; i < 33u; i++) m->unary[i] = PROBABILITY_HALF;
  for (i = 0; i < TREES; i++)
    for (j = 0; j < TREE_NODES; j++) m->tree[i][j] = PROBABILITY_HALF;
}

/* A ladder code: the class n = bitlen(v + 1) in unary, then the n - 1 bits
 * below the leading one, the first three under the class's tree; v < limit,
 * which is at most 2^32. */
static dpu_status read_ladder(dpu_applier *a, dpu_bits *r, dpu_ladder *m, uint64_t limit,
                              uint64_t *value) {
  uint32_t classes = 0, n = 1, node = 1, bit = 0, j;
  uint64_t rest = 0;
  dpu_status s;
  while ((limit >> classes) != 0) classes++;
  for (;;) {
    if ((s = range_bit(a, r, &m->unary[n - 1], 0, &bit)) != DPU_OK) return s;
    if (!bit) break;
    if (++n > classes) return DPU_ERR_MALFORMED;
  }
  for (j = 1; j < n; j++) {
    if (node <= TREE_NODES) {
      if ((s = range_bit(a, r, &m->tree[(n < TREES ? n : TREES) - 1][node - 1], 0, &bit)) !=
          DPU_OK)
        return s;
      node = 2 * node + bit;
    } else if ((s = range_bit(a, r, NULL, 1, &bit)) != DPU_OK) {
      return s;
    }
    rest = (rest << 1) | bit;
  }
  *value = ((uint64_t)1 << (n - 1)) + rest - 1;
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
  if (a->coding == CODING_COLUMNS) {
    /* one bit per element under its column's and row's counts of changes */
    for (;;) {
      uint32_t shift = 2u * (a->column % 4u), column_count, context;
      if (a->scan >= a->count) return DPU_ERR_MALFORMED;
      column_count = (a->columns[a->column / 4u] >> shift) & 3u;
      context = column_count * (COUNT_CAP + 1u) + a->in_row;
      if ((s = range_bit(a, &a->positions, &a->column_model[context], 0, &bit)) != DPU_OK)
        return s;
      a->position = a->scan++;
      if (bit) {
        if (column_count < COUNT_CAP)
          a->columns[a->column / 4u] = (uint8_t)(a->columns[a->column / 4u] + (1u << shift));
        if (a->in_row < COUNT_CAP) a->in_row++;
      }
      if (++a->column == a->row) a->column = a->in_row = 0;
      if (bit) return DPU_OK;
    }
  }
  if (a->coding == CODING_ADAPTIVE) {
    s = read_ladder(a, &a->positions, &a->position_model,
                    (uint64_t)a->count - (uint64_t)(a->previous + 1), &gap);
  } else {
    s = read_rice(a, &a->positions, a->rice_k, a->count, &gap);
  }
  if (s != DPU_OK) return s;
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
  uint64_t magnitude;
  uint32_t sign = 0;
  dpu_status s;
  a->value_ready = 0;
  if (a->value_coding == VALUES_RAW) return DPU_OK;
  if (a->value_coding == VALUES_DELTA)
    return read_rice(a, &a->values, a->value_k, value_mask(a) + 1, &a->zigzag);
  if (a->value_coding == VALUES_SATURATING) {
    /* the sign of new - old, then "the new value is that end of the int8
     * range", then (otherwise) |new - old| - 1 up to 254, taken modulo 2^8 */
    uint32_t end = 0;
    if ((s = range_bit(a, &a->values, &a->sign_model[a->last_sign], 0, &sign)) != DPU_OK)
      return s;
    a->last_sign = (uint8_t)sign;
    if ((s = range_bit(a, &a->values, &a->end_model[2u * a->last_end + sign], 0, &end)) !=
        DPU_OK)
      return s;
    a->last_end = (uint8_t)end;
    a->zigzag = 0;
    if (end) return DPU_OK;
    if ((s = read_ladder(a, &a->values, &a->value_model, 255u, &magnitude)) != DPU_OK) return s;
    magnitude = (sign ? 256u - (magnitude + 1) : magnitude + 1) & 0xffu; /* modulo 2^8 */
    a->zigzag = magnitude >= 128u ? 2u * (256u - magnitude) - 1u : 2u * magnitude;
    return DPU_OK;
  }
  /* adaptive: |delta| - 1 as a ladder, then the sign under the previous one */
  if ((s = read_ladder(a, &a->values, &a->value_model, (value_mask(a) >> 1) + 1, &magnitude)) !=
      DPU_OK)
    return s;
  if ((s = range_bit(a, &a->values, &a->sign_model[a->last_sign], 0, &sign)) != DPU_OK) return s;
  a->last_sign = (uint8_t)sign;
  a->zigzag = sign ? 2 * (magnitude + 1) - 1 : 2 * (magnitude + 1);
  return a->zigzag <= value_mask(a) ? DPU_OK : DPU_ERR_MALFORMED;
}

/* The current element's new bytes: raw from the patch, or the base's value plus
 * the delta modulo the element width. */
static dpu_status materialize(dpu_applier *a) {
  uint8_t old[8];
  uint64_t mask = value_mask(a), step, value = 0;
  unsigned i;
  if (a->value_coding == VALUES_RAW)
    return read_patch(a, a->values_at + a->element * a->elem_size, a->value, a->elem_size);
  if (a->value_coding == VALUES_SATURATING && a->last_end) {
    a->value[0] = (uint8_t)(a->last_sign ? 256u - INT8_END : INT8_END);
    return DPU_OK;
  }
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
 * Rice codes, none for adaptive ones; a bitmap must mark exactly `changed`
 * elements. */
static dpu_status check_stream_end(dpu_applier *a, dpu_bits *r, int rice, int adaptive) {
  uint32_t bit = 0;
  dpu_status s;
  if (adaptive) return r->pos == r->nbits ? DPU_OK : DPU_ERR_MALFORMED;
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
  uint64_t offset, span;
  uint32_t left;
  dpu_status s;
  if (a->cursor >= a->body_end) return DPU_ERR_MALFORMED;
  left = a->body_end - a->cursor;
  if ((s = read_patch(a, a->cursor, h, 1)) != DPU_OK) return s;
  a->kind = h[0];
  if (a->kind == KIND_ROTATION) {
    /* the first record of a patch verified with the device's key */
    if (!a->info.verified) return DPU_ERR_ROTATION;
    if (a->cursor != a->info.body_start || left < ROTATION_HEADER) return DPU_ERR_MALFORMED;
    if ((s = read_patch(a, a->cursor, h, 8)) != DPU_OK) return s;
    if (h[1] | h[2] | h[3] | h[4] | h[5] | h[6] | h[7]) return DPU_ERR_MALFORMED;
    if ((s = read_patch(a, a->cursor + 8, a->info.next_key, 32)) != DPU_OK) return s;
    a->info.rotated = 1;
    offset = span = 0;
    a->count = a->changed = 0;
    left = ROTATION_HEADER;
  } else if (a->kind == KIND_WHOLE_FILE) {
    if (!(a->options & DPU_ALLOW_WHOLE_FILE)) return DPU_ERR_WHOLE_FILE;
    if (a->info.record_count != 1 || left < WHOLE_FILE_HEADER) return DPU_ERR_MALFORMED;
    if ((s = read_patch(a, a->cursor, h, WHOLE_FILE_HEADER)) != DPU_OK) return s;
    span = le64(h + 4);
    if (h[1] || h[2] || h[3] || span != a->info.result_size ||
        span != (uint64_t)left - WHOLE_FILE_HEADER)
      return DPU_ERR_MALFORMED;
    offset = 0;
    a->count = a->changed = a->info.result_size;
    a->elem_size = 1;
    a->values_at = a->cursor + WHOLE_FILE_HEADER;
    a->whole_file = 1;
  } else if (a->kind == (a->info.version >= 4 ? KIND_COMPACT : KIND_ELEMENTS)) {
    uint32_t position_bytes, value_bytes, buffer, header;
    uint64_t found_offset = 0, found_span = 0;
    if (a->kind == KIND_COMPACT) {
      uint32_t numbers[5] = {0, 0, 0, 0, 0}, i, at = COMPACT_FIXED;
      if (left < COMPACT_FIXED) return DPU_ERR_MALFORMED;
      header = left < ELEMENTS_HEADER ? left : ELEMENTS_HEADER;
      if ((s = read_patch(a, a->cursor, h, header)) != DPU_OK) return s;
      /* four LEB128 numbers below 2^32, each in its shortest form, and the
       * row length of a column code */
      for (i = 0; i < (h[2] == CODING_COLUMNS ? 5u : 4u); i++) {
        uint64_t number = 0;
        uint32_t length = 0;
        for (;;) {
          if (at >= header || length == 5) return DPU_ERR_MALFORMED;
          number |= (uint64_t)(h[at] & 0x7fu) << (7 * length);
          length++;
          if (!(h[at++] & 0x80u)) break;
        }
        if ((length > 1 && h[at - 1] == 0) || number > 0xffffffffu) return DPU_ERR_MALFORMED;
        numbers[i] = (uint32_t)number;
      }
      header = at;
      buffer = numbers[0];
      a->changed = numbers[1];
      position_bytes = numbers[2];
      value_bytes = numbers[3];
      a->row = numbers[4];
    } else {
      header = ELEMENTS_HEADER;
      if (left < ELEMENTS_HEADER) return DPU_ERR_MALFORMED;
      if ((s = read_patch(a, a->cursor, h, ELEMENTS_HEADER)) != DPU_OK) return s;
      if (h[6] != 0 || h[7] != 0) return DPU_ERR_MALFORMED;
      buffer = le32(h + 8);
      a->changed = le32(h + 24);
      position_bytes = le32(h + 28);
      value_bytes = le32(h + 32);
    }
    a->elem_size = element_size(h[1]);
    a->coding = h[2];
    a->rice_k = h[3];
    a->value_coding = h[4];
    a->value_k = h[5];
    if (a->elem_size == 0 || a->coding > CODING_COLUMNS || a->value_coding > VALUES_SATURATING ||
        a->changed == 0)
      return DPU_ERR_MALFORMED;
    /* adaptive codes exist from version 4 on, the column and saturating ones
     * from version 5 (and only in its compact records) */
    if (a->info.version < 4 && (a->coding == CODING_ADAPTIVE || a->value_coding == VALUES_ADAPTIVE))
      return DPU_ERR_MALFORMED;
    if (a->info.version < 5 &&
        (a->coding == CODING_COLUMNS || a->value_coding == VALUES_SATURATING))
      return DPU_ERR_MALFORMED;
    if (a->value_coding == VALUES_SATURATING && h[1] != TYPE_INT8) return DPU_ERR_MALFORMED;
    /* a Rice parameter is 0..31, and 0 for the codes without one */
    if (a->rice_k > (a->coding == CODING_RICE ? 31u : 0u) ||
        a->value_k > (a->value_coding == VALUES_DELTA ? 31u : 0u))
      return DPU_ERR_MALFORMED;
    /* Sums of declared sizes are taken in 64 bits: none can wrap. */
    if ((uint64_t)position_bytes + value_bytes > (uint64_t)left - header) return DPU_ERR_MALFORMED;
    if (a->kind == KIND_ELEMENTS) {
      offset = le64(h + 12);
      a->count = le32(h + 20);
      span = (uint64_t)a->count * a->elem_size;
      if (a->changed > a->count || offset > a->info.model_size ||
          span > a->info.model_size - offset || offset % a->elem_size != 0)
        return DPU_ERR_MALFORMED;
      if ((s = check_writable(a, buffer, h[1], &found_offset, &found_span)) != DPU_OK) return s;
      if (found_offset != offset || found_span != span) return DPU_ERR_REGION;
    } else {
      /* the buffer alone says where: its data in the base */
      if ((s = check_writable(a, buffer, h[1], &offset, &span)) != DPU_OK) return s;
      if (span % a->elem_size != 0 || offset % a->elem_size != 0 ||
          offset > a->info.model_size || span > a->info.model_size - offset)
        return DPU_ERR_REGION;
      a->count = (uint32_t)(span / a->elem_size);
      if (a->changed > a->count) return DPU_ERR_MALFORMED;
    }
    if (a->coding == CODING_ALL && (a->changed != a->count || position_bytes != 0))
      return DPU_ERR_MALFORMED;
    /* a column code keeps two bits per column: its rows are bounded */
    if (a->coding == CODING_COLUMNS &&
        (a->row == 0 || a->row > a->count || a->row > DPU_MAX_COLUMNS))
      return DPU_ERR_MALFORMED;
    if (a->coding == CODING_BITMAP && position_bytes != a->count / 8 + (a->count % 8 != 0))
      return DPU_ERR_MALFORMED;
    if (a->coding == CODING_RICE &&
        (uint64_t)a->changed * (1u + a->rice_k) > 8u * (uint64_t)position_bytes)
      return DPU_ERR_MALFORMED;
    if (a->value_coding == VALUES_RAW) {
      if ((uint64_t)value_bytes != (uint64_t)a->changed * a->elem_size) return DPU_ERR_MALFORMED;
    } else if (a->elem_size > 4 ||
               (a->value_coding == VALUES_DELTA &&
                (uint64_t)a->changed * (1u + a->value_k) > 8u * (uint64_t)value_bytes)) {
      return DPU_ERR_MALFORMED;
    }
    bits_open(&a->positions, a->cursor + header, position_bytes);
    a->values_at = a->cursor + header + position_bytes;
    bits_open(&a->values, a->values_at, value_bytes);
    a->previous = -1;
    /* adaptive codes learn within the record: both sides start from even odds */
    if (a->coding == CODING_ADAPTIVE) {
      ladder_reset(&a->position_model);
      if ((s = range_open(a, &a->positions)) != DPU_OK) return s;
    }
    if (a->coding == CODING_COLUMNS) {
      unsigned i;
      for (i = 0; i < 9u; i++) a->column_model[i] = PROBABILITY_HALF;
      memset(a->columns, 0, (a->row + 3u) / 4u);
      a->scan = a->column = a->in_row = 0;
      if ((s = range_open(a, &a->positions)) != DPU_OK) return s;
    }
    if (a->value_coding == VALUES_ADAPTIVE || a->value_coding == VALUES_SATURATING) {
      unsigned i;
      ladder_reset(&a->value_model);
      a->sign_model[0] = a->sign_model[1] = PROBABILITY_HALF;
      for (i = 0; i < 4u; i++) a->end_model[i] = PROBABILITY_HALF;
      a->last_sign = a->last_end = 0;
      if ((s = range_open(a, &a->values)) != DPU_OK) return s;
    }
    left = header + position_bytes + value_bytes;
    a->kind = KIND_ELEMENTS; /* the layouts differ, the record's meaning does not */
  } else {
    return DPU_ERR_MALFORMED;
  }
  if (offset < a->previous_end) return DPU_ERR_MALFORMED;
  a->rec_offset = (uint32_t)offset;
  a->previous_end = (uint32_t)(offset + span);
  a->next_cursor = a->cursor + left;
  a->element = 0;
  a->done = 0;
  return DPU_OK;
}

/* Checks every record without writing anything. */
static dpu_status validate_records(dpu_applier *a) {
  uint32_t r;
  dpu_status s;
  a->cursor = a->info.body_start;
  a->previous_end = 0;
  a->whole_file = 0;
  a->info.rotated = 0;
  for (r = 0; r < a->info.record_count; r++) {
    if ((s = load_record(a)) != DPU_OK) return s;
    if (a->kind == KIND_ELEMENTS) {
      for (a->element = 0; a->element < a->changed; a->element++) {
        if ((s = next_position(a)) != DPU_OK) return s;
        if ((s = next_value(a)) != DPU_OK) return s;
      }
      if (a->coding != CODING_ALL &&
          (s = check_stream_end(a, &a->positions, a->coding == CODING_RICE,
                                a->coding >= CODING_ADAPTIVE)) != DPU_OK)
        return s;
      if (a->value_coding != VALUES_RAW &&
          (s = check_stream_end(a, &a->values, 1, a->value_coding >= VALUES_ADAPTIVE)) != DPU_OK)
        return s;
    }
    a->cursor = a->next_cursor;
  }
  if (a->cursor != a->body_end) return DPU_ERR_MALFORMED;
  /* only a whole file may change the model's size */
  if (!a->whole_file && a->info.result_size != a->info.model_size) return DPU_ERR_MALFORMED;
  /* a patch that only hands the key over leaves the model as it is */
  if (a->info.rotated && a->info.record_count == 1 &&
      memcmp(a->info.base_sha256, a->info.result_sha256, 32) != 0)
    return DPU_ERR_MALFORMED;
  return DPU_OK;
}

/* Positions the applier on the first change of the record at a->cursor. */
static dpu_status start_record(dpu_applier *a) {
  dpu_status s = load_record(a);
  if (s != DPU_OK || a->kind == KIND_WHOLE_FILE) return s;
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
    if (a->kind == KIND_WHOLE_FILE) {
      uint32_t from = a->done, take;
      if (from >= end) return DPU_OK;
      take = (uint32_t)((uint64_t)a->count < end ? a->count - from : end - from);
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
      /* load_record proved the record lies inside the model and starts at or
       * after every earlier one, so `at` never falls before this chunk. */
      if (at < start) return DPU_ERR_MALFORMED;
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

/* Everything that needs only the patch and the device's trust state: the
 * header (read once, kept in a->info), the trailer checksum and the body hash
 * (one sequential pass), the signature over the header as read, the key id,
 * freshness, expiry and round. Leaves a->patch_id = the patch's checksum. */
static dpu_status open_patch(dpu_applier *a, const dpu_io *io, const dpu_trust *trust,
                             uint32_t patch_size, uint32_t options) {
  uint8_t h[DPU_HEADER_SIZE];
  uint8_t signature[DPU_SIGNATURE_SIZE];
  uint8_t digest[32];
  dpu_sha256 body;
  uint64_t declared, base_size, result_size;
  uint32_t flags, at, jump, keeps;
  dpu_status s;
  unsigned i;

  memset(a, 0, sizeof(*a));
  a->io = io;
  a->patch_size = patch_size;
  a->options = options;
  if (!trust) return DPU_ERR_NO_KEY;
  if (patch_size < DPU_HEADER_SIZE + DPU_CHECKSUM_SIZE) return DPU_ERR_TRUNCATED;
  if ((s = read_patch(a, 0, h, DPU_HEADER_SIZE)) != DPU_OK) return s;
  if (memcmp(h, "DPUP", 4) != 0) return DPU_ERR_MAGIC;
  flags = (uint32_t)h[6] | ((uint32_t)h[7] << 8);
  if (h[4] < DPU_OLDEST_FORMAT_VERSION || h[4] > DPU_FORMAT_VERSION || h[5] != 0)
    return DPU_ERR_VERSION;
  a->info.version = h[4];
  a->info.round = le32(h + 8);
  base_size = le64(h + 12);
  result_size = le64(h + 20);
  a->info.record_count = le32(h + 92);
  a->info.body_length = le32(h + 96);
  a->info.release_time = le64(h + 100);
  a->info.expires = le64(h + 108);
  a->info.signed_patch = (uint8_t)(flags & FLAG_SIGNED);
  memcpy(a->info.key_id, h + 116, DPU_KEY_ID_SIZE);
  memcpy(a->info.base_sha256, h + 28, 32);
  memcpy(a->info.result_sha256, h + 60, 32);
  memcpy(a->info.body_sha256, h + 124, 32);
  a->info.body_start = DPU_HEADER_SIZE + (a->info.signed_patch ? DPU_SIGNATURE_SIZE : 0);
  declared = (uint64_t)a->info.body_start + a->info.body_length + DPU_CHECKSUM_SIZE;
  if (declared != patch_size) return DPU_ERR_TRUNCATED;
  a->body_end = a->info.body_start + a->info.body_length;

  /* the patch is intact: every byte after the header read once, in order */
  dpu_sha256_init(&a->sha);
  dpu_sha256_update(&a->sha, h, DPU_HEADER_SIZE);
  if (a->info.signed_patch) {
    if ((s = read_patch(a, DPU_HEADER_SIZE, signature, DPU_SIGNATURE_SIZE)) != DPU_OK) return s;
    dpu_sha256_update(&a->sha, signature, DPU_SIGNATURE_SIZE);
  }
  dpu_sha256_init(&body);
  for (at = a->info.body_start; at < a->body_end;) {
    uint32_t take = a->body_end - at < DPU_CHUNK ? a->body_end - at : DPU_CHUNK;
    if ((s = read_patch(a, at, a->chunk, take)) != DPU_OK) return s;
    dpu_sha256_update(&a->sha, a->chunk, take);
    dpu_sha256_update(&body, a->chunk, take);
    at += take;
  }
  dpu_sha256_final(&a->sha, a->patch_id);
  if ((s = read_patch(a, a->body_end, digest, 32)) != DPU_OK) return s;
  if (memcmp(digest, a->patch_id, 32) != 0) return DPU_ERR_CHECKSUM;
  if (flags & ~FLAG_SIGNED) return DPU_ERR_VERSION;
  if (!a->info.signed_patch)
    for (i = 0; i < DPU_KEY_ID_SIZE; i++)
      if (a->info.key_id[i]) return DPU_ERR_VERSION; /* an unsigned patch names no key */
  if (base_size > 0xffffffffu || result_size > 0xffffffffu ||
      a->info.record_count > MAX_RECORDS ||
      (uint64_t)a->info.record_count *
              (a->info.version >= 4 ? COMPACT_SMALLEST : WHOLE_FILE_HEADER) >
          a->info.body_length)
    return DPU_ERR_MALFORMED;
  dpu_sha256_final(&body, digest);
  if (memcmp(digest, a->info.body_sha256, 32) != 0) return DPU_ERR_BODY;
  a->info.model_size = (uint32_t)base_size;
  a->info.result_size = (uint32_t)result_size;

  /* it comes from the key holder the device trusts */
  if (trust->public_key) {
    if (!io->verify_signature) return DPU_ERR_NO_KEY;
    if (!a->info.signed_patch) return DPU_ERR_UNSIGNED;
    dpu_sha256_init(&a->sha);
    dpu_sha256_update(&a->sha, trust->public_key, 32);
    dpu_sha256_final(&a->sha, digest);
    if (memcmp(digest, a->info.key_id, DPU_KEY_ID_SIZE) != 0) return DPU_ERR_KEY_ID;
    if (io->verify_signature(io->ctx, trust->public_key, h, DPU_HEADER_SIZE, signature) != 0)
      return DPU_ERR_SIGNATURE;
    a->info.verified = 1;
  } else if (!(options & DPU_ALLOW_UNSIGNED)) {
    return DPU_ERR_NO_KEY;
  }
  /* fresh: never older than the last update, not expired by the device's clock */
  if (a->info.release_time < trust->release_time) return DPU_ERR_STALE;
  if (a->info.expires && (a->info.expires <= a->info.release_time ||
                          (trust->now && a->info.expires <= trust->now)))
    return DPU_ERR_EXPIRED;
  /* newer, below the reserved round, and without a key not too far ahead */
  keeps = base_size == result_size && memcmp(a->info.base_sha256, a->info.result_sha256, 32) == 0;
  if (a->info.round > DPU_MAX_ROUND || a->info.round < trust->round ||
      (a->info.round == trust->round && !keeps))
    return DPU_ERR_ROUND;
  jump = trust->max_round_jump ? trust->max_round_jump : DPU_DEFAULT_ROUND_JUMP;
  if (!a->info.verified && a->info.round - trust->round > jump) return DPU_ERR_ROUND;
  return DPU_OK;
}

/* The model (through read_base) hashes to the patch's base, or says why not. */
static dpu_status check_base(dpu_applier *a, uint32_t base_size) {
  uint8_t digest[32];
  dpu_status s;
  dpu_sha256_init(&a->sha);
  if ((s = hash_base(a, 0, base_size)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if (base_size == a->info.result_size && memcmp(digest, a->info.result_sha256, 32) == 0 &&
      memcmp(digest, a->info.base_sha256, 32) != 0)
    return DPU_ERR_ALREADY_APPLIED;
  if (a->info.model_size != base_size || memcmp(digest, a->info.base_sha256, 32) != 0)
    return DPU_ERR_BASE;
  return DPU_OK;
}

static dpu_status begin_writing(dpu_applier *a) {
  a->cursor = a->info.body_start;
  a->previous_end = 0;
  a->records_left = a->info.record_count;
  if (a->info.rotated) { /* the key rotation writes nothing */
    a->cursor += ROTATION_HEADER;
    a->records_left--;
  }
  return a->records_left > 0 ? start_record(a) : DPU_OK;
}

/* After the records are valid: a rotation's next key must be a strong key, and
 * not the one that signed it. Run at the top level (the key check needs the
 * most stack of anything here). */
static dpu_status check_rotation(dpu_applier *a, const dpu_trust *trust) {
  if (!a->info.rotated) return DPU_OK;
  if (memcmp(a->info.next_key, trust->public_key, 32) == 0) return DPU_ERR_ROTATION;
  return dpu_check_public_key(a->info.next_key) == DPU_OK ? DPU_OK : DPU_ERR_ROTATION;
}

dpu_status dpu_apply(dpu_applier *a, const dpu_io *io, const dpu_trust *trust,
                     uint32_t patch_size, uint32_t base_size, uint32_t options) {
  uint8_t digest[32];
  uint32_t out, size;
  dpu_status s;
  if ((s = open_patch(a, io, trust, patch_size, options)) != DPU_OK) return s;
  if ((s = check_base(a, base_size)) != DPU_OK) return s;
  if ((s = validate_records(a)) != DPU_OK) return s;
  if ((s = check_rotation(a, trust)) != DPU_OK) return s;

  /* write base + changes (or the whole new file), hashing what is written */
  if ((s = begin_writing(a)) != DPU_OK) return s;
  dpu_sha256_init(&a->sha);
  size = a->info.result_size;
  for (out = 0; out < size;) {
    uint32_t take = size - out < DPU_CHUNK ? size - out : DPU_CHUNK;
    if (!a->whole_file && io->read_base(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
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

dpu_status dpu_apply_in_place(dpu_applier *a, const dpu_io *io, const dpu_trust *trust,
                              uint32_t patch_size, uint32_t model_size, uint32_t options) {
  uint8_t digest[32];
  uint32_t phase, out, resume = 0;
  dpu_status s;
  if ((s = open_patch(a, io, trust, patch_size, options)) != DPU_OK) return s;
  if (!io->read_journal || !io->write_journal) return DPU_ERR_IO;
  if (a->info.model_size != model_size) return DPU_ERR_BASE;
  /* the model's storage holds model_size bytes: the result must fit it exactly */
  if (a->info.result_size != model_size) return DPU_ERR_SIZE;
  if ((s = read_journal(a, &phase)) != DPU_OK) return s;
  if (phase == JOURNAL_DONE) return DPU_ERR_ALREADY_APPLIED;
  /* A fresh start checks the base; a resumed one cannot (the model is half
   * new) and relies on the journal naming this very patch. */
  if (phase == JOURNAL_NONE && (s = check_base(a, model_size)) != DPU_OK) return s;
  if ((s = validate_records(a)) != DPU_OK) return s;
  if ((s = check_rotation(a, trust)) != DPU_OK) return s;
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
  if ((s = hash_base(a, 0, model_size)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if (memcmp(digest, a->info.result_sha256, 32) != 0) return DPU_ERR_RESULT;
  return write_journal(a, JOURNAL_DONE, 0, 0);
}

/* ---------------------------------------------------- in place, NOR flash */

/* Record phases of the sector log. */
#define SECTOR_START 1u  /* the apply began: the base was checked */
#define SECTOR_COPIED 2u /* the copy sector holds sector n's new bytes, with this hash */
#define SECTOR_DONE 3u   /* sector n of the model holds its new bytes */
#define SECTOR_ALL 4u    /* the model is the result */

/* Record layout: "DPUS", patch id (32), sequence u32, phase u32, sector u32,
 * SHA-256 of the copy sector's bytes (32), then 16 bytes of the SHA-256 of the
 * 80 before them. */
static uint32_t log_slots(const dpu_applier *a) {
  return a->sector_size / DPU_SECTOR_RECORD;
}

static uint32_t log_offset(const dpu_applier *a, uint32_t sector, uint32_t slot) {
  return a->sector_size * (1u + sector) + slot * DPU_SECTOR_RECORD;
}

/* Reads a record into a->journal: 1 if it is valid and for this patch, 0 if
 * not, and *blank whether the slot is still erased. */
static dpu_status read_record(dpu_applier *a, uint32_t sector, uint32_t slot, int *valid,
                              int *blank) {
  uint8_t digest[32];
  dpu_sha256 sha;
  uint32_t i;
  uint8_t *r = a->journal;
  *valid = *blank = 0;
  if (a->io->read_journal(a->io->ctx, log_offset(a, sector, slot), r, DPU_SECTOR_RECORD))
    return DPU_ERR_IO;
  *blank = 1;
  for (i = 0; i < DPU_SECTOR_RECORD; i++)
    if (r[i] != 0xffu) *blank = 0;
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, r, 80);
  dpu_sha256_final(&sha, digest);
  *valid = memcmp(r, "DPUS", 4) == 0 && memcmp(digest, r + 80, 16) == 0 &&
           memcmp(r + 4, a->patch_id, 32) == 0;
  return DPU_OK;
}

/* Finds this patch's newest record (left in a->journal; *phase 0 if none) and
 * where the next one goes. */
static dpu_status scan_log(dpu_applier *a, uint32_t *phase) {
  uint32_t sector, slot, best_seq = 0, best_sector = 0, best_slot = 0, seq;
  uint32_t last_used[2] = {0, 0}; /* one past the last slot written, per log sector */
  int valid, blank;
  dpu_status s;
  *phase = 0;
  for (sector = 0; sector < 2; sector++) {
    for (slot = 0; slot < log_slots(a); slot++) {
      if ((s = read_record(a, sector, slot, &valid, &blank)) != DPU_OK) return s;
      if (!blank) last_used[sector] = slot + 1u;
      seq = le32(a->journal + 36);
      if (valid && seq > best_seq) {
        best_seq = seq;
        best_sector = sector;
        best_slot = slot;
      }
    }
  }
  if (best_seq == 0) { /* a fresh start: the first record erases log sector 0 */
    a->log_sector = 1;
    a->log_slot = log_slots(a);
    a->journal_seq = 0;
    return DPU_OK;
  }
  if ((s = read_record(a, best_sector, best_slot, &valid, &blank)) != DPU_OK) return s;
  a->journal_seq = best_seq;
  a->log_sector = (uint8_t)best_sector;
  a->log_slot = last_used[best_sector];
  *phase = le32(a->journal + 40);
  return DPU_OK;
}

/* Appends a record; a full log sector hands over to the other one, erased
 * first (the record carries the whole state, so the older sector is spare). */
static dpu_status append_record(dpu_applier *a, const dpu_sectors *sectors, uint32_t phase,
                                uint32_t sector, const uint8_t hash[32]) {
  dpu_sha256 sha;
  uint8_t digest[32];
  uint8_t *r = a->journal;
  if (a->log_slot >= log_slots(a)) {
    a->log_sector ^= 1u;
    a->log_slot = 0;
    if (sectors->erase_journal(a->io->ctx, log_offset(a, a->log_sector, 0), a->sector_size))
      return DPU_ERR_IO;
  }
  memcpy(r, "DPUS", 4);
  memcpy(r + 4, a->patch_id, 32);
  put_le32(r + 36, ++a->journal_seq);
  put_le32(r + 40, phase);
  put_le32(r + 44, sector);
  if (hash) memcpy(r + 48, hash, 32);
  else memset(r + 48, 0, 32);
  dpu_sha256_init(&sha);
  dpu_sha256_update(&sha, r, 80);
  dpu_sha256_final(&sha, digest);
  memcpy(r + 80, digest, 16);
  return a->io->write_journal(a->io->ctx, log_offset(a, a->log_sector, a->log_slot++), r,
                              DPU_SECTOR_RECORD)
             ? DPU_ERR_IO
             : DPU_OK;
}

/* The SHA-256 of the copy sector's first `len` bytes, read back from flash
 * (through a->chunk: a->journal may hold the record that names the hash). */
static dpu_status hash_copy(dpu_applier *a, uint32_t len, uint8_t digest[32]) {
  uint32_t at, take;
  dpu_sha256_init(&a->sha);
  for (at = 0; at < len; at += take) {
    take = len - at < DPU_CHUNK ? len - at : DPU_CHUNK;
    if (a->io->read_journal(a->io->ctx, at, a->chunk, take)) return DPU_ERR_IO;
    dpu_sha256_update(&a->sha, a->chunk, take);
  }
  dpu_sha256_final(&a->sha, digest);
  return DPU_OK;
}

/* Erases model sector n and programs the copy sector's bytes into it; then
 * records it done. Repeatable: the copy sector is not touched. */
static dpu_status commit_sector(dpu_applier *a, const dpu_sectors *sectors, uint32_t n,
                                uint32_t len) {
  uint32_t at, take, start = n * a->sector_size;
  if (sectors->erase_model(a->io->ctx, start, a->sector_size)) return DPU_ERR_IO;
  for (at = 0; at < len; at += take) {
    take = len - at < DPU_CHUNK ? len - at : DPU_CHUNK;
    if (a->io->read_journal(a->io->ctx, at, a->journal, take)) return DPU_ERR_IO;
    if (a->io->write_out(a->io->ctx, start + at, a->journal, take)) return DPU_ERR_IO;
  }
  return append_record(a, sectors, SECTOR_DONE, n, NULL);
}

dpu_status dpu_apply_in_sectors(dpu_applier *a, const dpu_io *io, const dpu_sectors *sectors,
                                const dpu_trust *trust, uint32_t patch_size, uint32_t model_size,
                                uint32_t options) {
  uint8_t digest[32];
  uint32_t phase, n, count, out, resume = 0, size = sectors ? sectors->sector_size : 0;
  dpu_status s;
  if ((s = open_patch(a, io, trust, patch_size, options)) != DPU_OK) return s;
  if (!io->read_journal || !io->write_journal || !sectors || !sectors->erase_model ||
      !sectors->erase_journal || size < 256u || size % DPU_CHUNK != 0 ||
      size > (1u << 24))
    return DPU_ERR_CONFIG;
  a->sector_size = size;
  if (a->info.model_size != model_size) return DPU_ERR_BASE;
  if (a->info.result_size != model_size) return DPU_ERR_SIZE;
  if ((s = scan_log(a, &phase)) != DPU_OK) return s;
  if (phase == SECTOR_ALL) return DPU_ERR_ALREADY_APPLIED;
  count = (model_size + size - 1u) / size;
  if (phase == SECTOR_COPIED || phase == SECTOR_DONE) {
    n = le32(a->journal + 44);
    if (n >= count) return DPU_ERR_MALFORMED;
    if (phase == SECTOR_COPIED) {
      /* Cut between the copy and the model: the model sector may be half
       * erased, so it is programmed again before anything reads the model.
       * The copy is this patch's (the record names it) and intact (its hash). */
      uint32_t len = model_size - n * size < size ? model_size - n * size : size;
      if ((s = hash_copy(a, len, digest)) != DPU_OK) return s;
      if (memcmp(digest, a->journal + 48, 32) != 0) return DPU_ERR_IO; /* the flash lost bytes */
      if ((s = commit_sector(a, sectors, n, len)) != DPU_OK) return s;
    }
    resume = (n + 1u) * size;
  } else if (phase != 0 && phase != SECTOR_START) {
    return DPU_ERR_MALFORMED;
  }
  if (phase == 0 && (s = check_base(a, model_size)) != DPU_OK) return s;
  if ((s = validate_records(a)) != DPU_OK) return s;
  if ((s = check_rotation(a, trust)) != DPU_OK) return s;
  if (phase == 0 && (s = append_record(a, sectors, SECTOR_START, 0, NULL)) != DPU_OK) return s;
  if ((s = begin_writing(a)) != DPU_OK) return s;
  for (n = 0; n < count; n++) {
    uint32_t start = n * size, end = model_size - start < size ? model_size : start + size;
    int copying = 0;
    for (out = start; out < end;) {
      uint32_t take = end - out < DPU_CHUNK ? end - out : DPU_CHUNK, at;
      a->skip = out < resume;
      a->touched = 0;
      if (!a->skip && io->read_base(io->ctx, out, a->chunk, take)) return DPU_ERR_IO;
      if ((s = apply_to_chunk(a, out, take)) != DPU_OK) return s;
      if (!a->skip && a->touched && !copying) {
        /* Written to, but changed? (A whole file rewrites every chunk, mostly
         * with the same bytes; a sector is erased only if its bytes change.) */
        if (io->read_base(io->ctx, out, a->journal, take)) return DPU_ERR_IO;
        a->touched = memcmp(a->journal, a->chunk, take) != 0;
      }
      if (!a->skip && a->touched && !copying) {
        /* the sector changes: its unchanged chunks so far go to the copy first */
        if (sectors->erase_journal(io->ctx, 0, size)) return DPU_ERR_IO;
        for (at = start; at < out; at += DPU_CHUNK) {
          if (io->read_base(io->ctx, at, a->journal, DPU_CHUNK)) return DPU_ERR_IO;
          if (io->write_journal(io->ctx, at - start, a->journal, DPU_CHUNK)) return DPU_ERR_IO;
        }
        copying = 1;
      }
      if (copying && io->write_journal(io->ctx, out - start, a->chunk, take)) return DPU_ERR_IO;
      out += take;
    }
    if (copying) {
      if ((s = hash_copy(a, end - start, digest)) != DPU_OK) return s;
      if ((s = append_record(a, sectors, SECTOR_COPIED, n, digest)) != DPU_OK) return s;
      if ((s = commit_sector(a, sectors, n, end - start)) != DPU_OK) return s;
    }
  }
  a->skip = 0;
  dpu_sha256_init(&a->sha);
  if ((s = hash_base(a, 0, model_size)) != DPU_OK) return s;
  dpu_sha256_final(&a->sha, digest);
  if (memcmp(digest, a->info.result_sha256, 32) != 0) return DPU_ERR_RESULT;
  return append_record(a, sectors, SECTOR_ALL, 0, NULL);
}

/* ------------------------------------------------------------ public keys */

/* Arithmetic modulo p = 2^255 - 19 on 16 limbs of 16 bits, held in 64-bit
 * words so that sums and products never overflow; only what the key check
 * needs (it runs once, when a key is provisioned, not per patch). */
typedef uint64_t dpu_fe[16];

static void fe_carry(dpu_fe o) {
  unsigned pass, i;
  for (pass = 0; pass < 3; pass++) {
    for (i = 0; i < 16; i++) {
      uint64_t carry = o[i] >> 16;
      o[i] &= 0xffffu;
      if (i < 15) o[i + 1] += carry;
      else o[0] += 38u * carry; /* 2^256 = 38 (mod p) */
    }
  }
}

static void fe_from_bytes(dpu_fe o, const uint8_t b[32]) {
  unsigned i;
  for (i = 0; i < 16; i++) o[i] = (uint64_t)b[2 * i] | ((uint64_t)b[2 * i + 1] << 8);
  o[15] &= 0x7fffu;
}

static void fe_mul(dpu_fe o, const dpu_fe a, const dpu_fe b) {
  uint64_t t[31];
  unsigned i, j;
  for (i = 0; i < 31; i++) t[i] = 0;
  for (i = 0; i < 16; i++)
    for (j = 0; j < 16; j++) t[i + j] += a[i] * b[j];
  for (i = 0; i < 15; i++) t[i] += 38u * t[i + 16];
  for (i = 0; i < 16; i++) o[i] = t[i];
  fe_carry(o);
}

/* o = a + 1, or a - 1 when `minus_one` (computed as a + 2p - 1, so that no
 * limb goes negative). */
static void fe_add_small(dpu_fe o, const dpu_fe a, int minus_one) {
  unsigned i;
  for (i = 0; i < 16; i++) o[i] = a[i];
  if (minus_one) {
    o[0] += 0x1ffdau - 1u;
    for (i = 1; i < 15; i++) o[i] += 0x1fffeu;
    o[15] += 0xfffeu;
  } else {
    o[0] += 1u;
  }
  fe_carry(o);
}

/* The canonical value (0 <= v < p) as 32 little-endian bytes. */
static void fe_to_bytes(uint8_t out[32], const dpu_fe a) {
  dpu_fe t;
  unsigned i, round;
  for (i = 0; i < 16; i++) t[i] = a[i];
  do fe_carry(t); while (t[0] >> 16);
  for (round = 0; round < 2; round++) { /* t < 2^256 < 3p: subtract p up to twice */
    uint64_t m[16], borrow = 0;
    for (i = 0; i < 16; i++) {
      uint64_t limb = (i == 0) ? 0xffedu : (i == 15 ? 0x7fffu : 0xffffu);
      uint64_t want = limb + borrow;
      m[i] = (t[i] - want) & 0xffffu;
      borrow = t[i] < want;
    }
    if (!borrow)
      for (i = 0; i < 16; i++) t[i] = m[i];
  }
  for (i = 0; i < 16; i++) {
    out[2 * i] = (uint8_t)t[i];
    out[2 * i + 1] = (uint8_t)(t[i] >> 8);
  }
}

dpu_status dpu_check_public_key(const uint8_t key[32]) {
  static const uint8_t d_bytes[32] = {
      0xa3, 0x78, 0x59, 0x13, 0xca, 0x4d, 0xeb, 0x75, 0xab, 0xd8, 0x41, 0x41, 0x4d, 0x0a, 0x70, 0x00,
      0x98, 0xe8, 0x79, 0x77, 0x79, 0x40, 0xc7, 0x8c, 0x73, 0xfe, 0x6f, 0x2b, 0xee, 0x6c, 0x03, 0x52};
  /* The y of every point of small order (order dividing 8): 0, 1, p - 1, and the
   * two of order 8. A key with such a y accepts forged signatures. */
  static const uint8_t small_order[5][32] = {
      {0},
      {1},
      {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
      {0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
       0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
      {0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
       0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a}};
  uint8_t y_bytes[32], canonical[32], one[32] = {1};
  dpu_fe y, y2, u, v, d, w, r;
  unsigned i;
  int bit;
  memcpy(y_bytes, key, 32);
  y_bytes[31] &= 0x7fu;
  fe_from_bytes(y, y_bytes);
  fe_to_bytes(canonical, y);
  if (memcmp(canonical, y_bytes, 32) != 0) return DPU_ERR_KEY; /* y >= p */
  for (i = 0; i < 5; i++)
    if (memcmp(y_bytes, small_order[i], 32) == 0) return DPU_ERR_KEY;
  /* x^2 = u / v with u = y^2 - 1, v = d y^2 + 1: a point exists iff u v is a
   * square, i.e. (u v)^((p - 1) / 2) = 1 (u = 0 only for y = +-1, refused above). */
  fe_from_bytes(d, d_bytes);
  fe_mul(y2, y, y);
  fe_add_small(u, y2, 1);
  fe_mul(v, d, y2);
  fe_add_small(v, v, 0);
  fe_mul(w, u, v);
  for (i = 0; i < 16; i++) r[i] = (i == 0);
  for (bit = 253; bit >= 0; bit--) { /* (p - 1) / 2 = 2^254 - 10 */
    fe_mul(r, r, r);
    if (bit >= 4 || ((0x6u >> bit) & 1u)) fe_mul(r, r, w);
  }
  fe_to_bytes(canonical, r);
  return memcmp(canonical, one, 32) == 0 ? DPU_OK : DPU_ERR_KEY;
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
    case DPU_ERR_ROUND: return "patch round is not newer than the device's model (or is the reserved last round, or too far ahead for an unsigned device)";
    case DPU_ERR_REGION: return "patch writes outside the model's weight and bias buffers";
    case DPU_ERR_MODEL: return "the model is not a valid TFLite flatbuffer";
    case DPU_ERR_WHOLE_FILE: return "patch replaces the whole model, which this device refuses";
    case DPU_ERR_SIZE: return "the patch's result does not fit the model's storage";
    case DPU_ERR_KEY: return "the public key is malformed or of small order";
    case DPU_ERR_KEY_ID: return "patch is signed by a key this device does not trust (retired or unknown)";
    case DPU_ERR_STALE: return "patch was released before the last update this device applied";
    case DPU_ERR_EXPIRED: return "patch has expired";
    case DPU_ERR_NO_KEY: return "no public key to check the patch with, and unsigned patches are not allowed";
    case DPU_ERR_BODY: return "patch body does not match the SHA-256 in its header";
    case DPU_ERR_ROTATION: return "patch rotates the signing key in a way this device refuses";
    case DPU_ERR_CONFIG: return "the applier is misconfigured (a missing callback, or a sector size that is not a multiple of the chunk, from 256 bytes to 16 MiB)";
    case DPU_ERR_NOT_RAW: return "the model's weights are not raw tensors (compressed for TFLite Micro, compiled for the Edge TPU, or sparse): element patches cannot rewrite them; send a signed whole-file update";
  }
  return "unknown error";
}
