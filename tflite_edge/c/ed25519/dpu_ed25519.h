/*
 * Ed25519 signature verification for the applier's verify_signature callback,
 * on Monocypher 4 (monocypher.c and monocypher.h from its release; see
 * docs/microcontrollers.md). Monocypher's own EdDSA hashes with BLAKE2b; this
 * file adds the SHA-512 that Ed25519 (RFC 8032) uses and OpenSSL's rule for R
 * (its canonical encoding only), so it accepts exactly the signatures that
 * the server's signing and the Python, JVM and OpenSSL verifiers accept.
 * Keys are checked once, when provisioned, by dpu_check_public_key.
 */
#ifndef DPU_ED25519_H
#define DPU_ED25519_H

#include <stdint.h>

/* 0 when `signature` is valid for message[0, length) under `public_key`, else -1. */
int dpu_ed25519_verify(const uint8_t public_key[32], const uint8_t *message, uint32_t length,
                       const uint8_t signature[64]);

#endif
