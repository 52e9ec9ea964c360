/*
 * How a firmware wires the applier: the model, the incoming patch and the
 * journal in memory-mapped NOR flash (erased a 4 KiB sector at a time), the
 * new model programmed into the other slot (A/B) or, on a device without room
 * for two, rewritten where it lies a sector at a time (dpu_apply_in_sectors),
 * the device's trust state in its own flash page. Built for a
 * Cortex-M4 by the tests (tests/test_microcontroller.py), which link it to
 * measure what the applier adds to a firmware image:
 *
 *   make -C tflite_edge/c lib CROSS=arm-none-eabi- OUT=build
 *   arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os -Itflite_edge/c \
 *       --specs=nano.specs --specs=nosys.specs -Wl,--gc-sections \
 *       tflite_edge/c/examples/firmware.c build/libdpu_patch.a -o firmware.elf
 *
 * The flash_* functions are the board's; here they are weak stand-ins so
 * that the example links on its own. verify_ed25519 is the recipe's
 * Monocypher verifier with -DWITH_MONOCYPHER (add -I<monocypher folder> and
 * build monocypher.c and ed25519/dpu_ed25519.c with it), a stand-in that
 * refuses everything otherwise. With -DWITHOUT_APPLIER the same image
 * without the applier, for the size difference.
 */
#include <stdint.h>
#include <string.h>

#include "dpu_patch.h"

/* Where things are in flash (a board's linker script would say). */
#define MODEL_A ((const uint8_t *)0x08020000u)
#define MODEL_B ((const uint8_t *)0x08060000u)
#define PATCH_AREA ((const uint8_t *)0x080a0000u)
#define JOURNAL_AREA ((const uint8_t *)0x080b0000u) /* DPU_SECTOR_JOURNAL_SIZE(SECTOR) */
#define SECTOR 4096u

__attribute__((weak)) int flash_program(const uint8_t *at, const uint8_t *data, uint32_t len) {
  (void)at;
  (void)data;
  (void)len;
  return 0;
}

__attribute__((weak)) int flash_erase(const uint8_t *at, uint32_t len) {
  (void)at;
  (void)len;
  return 0;
}

#ifdef WITH_MONOCYPHER
/* The recipe's verifier (ed25519/dpu_ed25519.c on Monocypher). */
#include "ed25519/dpu_ed25519.h"

int verify_ed25519(const uint8_t key[32], const uint8_t *message, uint32_t length,
                   const uint8_t signature[64]) {
  return dpu_ed25519_verify(key, message, length, signature);
}
#else
__attribute__((weak)) int verify_ed25519(const uint8_t key[32], const uint8_t *message,
                                         uint32_t length, const uint8_t signature[64]) {
  (void)key;
  (void)message;
  (void)length;
  (void)signature;
  return -1; /* refuse everything until a real verifier is linked */
}
#endif

volatile uint32_t update_status;

#ifndef WITHOUT_APPLIER
/* The device's key, written when the device is provisioned. */
static const uint8_t device_key[32] = {0};

struct slots {
  const uint8_t *model, *patch, *out;
};

static int read_patch(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  memcpy(buf, ((struct slots *)ctx)->patch + offset, len);
  return 0;
}

static int read_base(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  memcpy(buf, ((struct slots *)ctx)->model + offset, len);
  return 0;
}

static int write_out(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  return flash_program(((struct slots *)ctx)->out + offset, buf, len);
}

static int verify(void *ctx, const uint8_t key[32], const uint8_t *message, uint32_t length,
                  const uint8_t signature[DPU_SIGNATURE_SIZE]) {
  (void)ctx;
  return verify_ed25519(key, message, length, signature);
}

static int read_journal(void *ctx, uint32_t offset, uint8_t *buf, uint32_t len) {
  (void)ctx;
  memcpy(buf, JOURNAL_AREA + offset, len);
  return 0;
}

static int write_journal(void *ctx, uint32_t offset, const uint8_t *buf, uint32_t len) {
  (void)ctx;
  return flash_program(JOURNAL_AREA + offset, buf, len);
}

static int erase_model(void *ctx, uint32_t offset, uint32_t len) {
  return flash_erase(((struct slots *)ctx)->out + offset, len);
}

static int erase_journal(void *ctx, uint32_t offset, uint32_t len) {
  (void)ctx;
  return flash_erase(JOURNAL_AREA + offset, len);
}

/* All the applier's RAM: static, so the link map shows it. */
static dpu_applier applier;
volatile uint32_t update_round;

/* Applies a received patch. With two slots (A/B) the new model goes to the
 * other slot (erased beforehand) and the boot code switches only after
 * DPU_OK; with one, the model is rewritten where it lies, a sector at a time,
 * resumable after a power cut (call again with the same patch at boot until
 * it returns DPU_OK or DPU_ERR_ALREADY_APPLIED).
 * After DPU_OK the firmware stores applier.info.round and .release_time as its
 * new trust state. */
static uint32_t apply_update(uint32_t patch_size, uint32_t model_size, uint32_t round,
                             uint64_t release_time, int in_place) {
  struct slots slots = {MODEL_A, PATCH_AREA, in_place ? MODEL_A : MODEL_B};
  dpu_io io = {&slots, read_patch, read_base, write_out, verify, read_journal, write_journal};
  dpu_sectors flash = {SECTOR, erase_model, erase_journal};
  dpu_trust trust = {0, 0, 0, device_key, 0};
  dpu_status status;
  trust.round = round;
  trust.release_time = release_time;
  if (in_place)
    status = dpu_apply_in_sectors(&applier, &io, &flash, &trust, patch_size, model_size, 0);
  else if (flash_erase(MODEL_B, (model_size + SECTOR - 1u) / SECTOR * SECTOR) != 0)
    status = DPU_ERR_IO;
  else
    status = dpu_apply(&applier, &io, &trust, patch_size, model_size, 0);
  update_round = applier.info.round;
  return status;
}

#endif

int main(void) {
  const volatile uint32_t *request = (const volatile uint32_t *)PATCH_AREA;
#ifndef WITHOUT_APPLIER
  /* at provisioning: a malformed or weak key is never trusted */
  if (dpu_check_public_key(device_key) == DPU_OK)
    update_status = apply_update(request[0], request[1], request[2], 0, (int)request[3]);
#else
  update_status = request[0] + request[1] + request[2] + request[3];
#endif
  for (;;) {
  }
}
