package org.tfdpu.patch;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * An Ed25519 public key, checked when it is loaded: 32 bytes, the canonical
 * encoding of a point on the curve, and not one of the eight points of small
 * order. With the identity point as key, the signature R = identity, S = 0
 * verifies for every message; signature libraries accept it.
 */
public final class PatchKey {
  private final byte[] raw;

  private PatchKey(byte[] raw) {
    this.raw = raw.clone();
  }

  byte[] raw() {
    return raw.clone();
  }

  /** A key from its 32 raw bytes. */
  public static PatchKey of(byte[] raw) throws PatchException {
    if (raw.length != 32) {
      throw new PatchException(PatchException.Reason.KEY,
          "an Ed25519 public key is 32 bytes, not " + raw.length);
    }
    if (!PureEd25519Verifier.canonicalPoint(raw)) {
      throw new PatchException(PatchException.Reason.KEY,
          "the public key is not a valid Ed25519 point");
    }
    if (PureEd25519Verifier.smallOrder(raw)) {
      throw new PatchException(PatchException.Reason.KEY, "the public key is a point of small "
          + "order (a weak key that accepts forged signatures)");
    }
    return new PatchKey(raw);
  }

  /** A key from a file of exactly 32 raw bytes (what `keygen` writes). */
  public static PatchKey load(Path path) throws PatchException {
    byte[] raw;
    try {
      if (Files.size(path) != 32) {
        throw new PatchException(PatchException.Reason.KEY,
            path + " is not a raw 32-byte Ed25519 public key");
      }
      raw = Files.readAllBytes(path);
    } catch (IOException e) {
      throw new PatchException(PatchException.Reason.IO,
          "cannot read public key " + path + ": " + e.getMessage());
    }
    try {
      return of(raw);
    } catch (PatchException e) {
      throw new PatchException(e.reason(), path + ": " + e.getMessage());
    }
  }
}
