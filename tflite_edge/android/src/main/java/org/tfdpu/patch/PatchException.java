package org.tfdpu.patch;

/**
 * Every refusal of the applier: one type, one line of message, and a reason an
 * app can switch on. When it is thrown, the model file is as it was.
 */
public final class PatchException extends Exception {
  private static final long serialVersionUID = 1L;

  /** Why a patch, a key or a state file was refused. */
  public enum Reason {
    /** Size, magic, version, flags or layout of the patch. */
    FORMAT,
    /** The patch's own SHA-256 does not match: corrupted in transit. */
    CHECKSUM,
    /** Unsigned under a key, or a signature that does not verify. */
    SIGNATURE,
    /** A public key that is malformed or of small order. */
    KEY,
    /** Not for a newer round than the device's: replayed or downgraded. */
    ROUND,
    /** Released before the last update applied, or expired. */
    STALE,
    /** The model is not the patch's base. */
    BASE,
    /** The model already is the patch's result. */
    ALREADY_APPLIED,
    /** A record is malformed or badly coded. */
    RECORD,
    /** A record writes outside the model's weight and bias buffers. */
    REGION,
    /** The base model is not a valid TFLite flatbuffer. */
    MODEL,
    /** The model's weights are compressed, compiled or sparse: only whole-file updates apply. */
    NOT_RAW,
    /** A whole-file update the device's configuration refuses. */
    WHOLE_FILE,
    /** The patched model does not hash to the declared result. */
    RESULT,
    /** The device's state file is missing, unreadable or for another model. */
    STATE,
    /** A file could not be read or written. */
    IO
  }

  private final Reason reason;

  public PatchException(Reason reason, String message) {
    super(message);
    this.reason = reason;
  }

  /** Why the patch was refused. */
  public Reason reason() {
    return reason;
  }
}
