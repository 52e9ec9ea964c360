package org.tfdpu.patch;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Map;

/**
 * The device's record of its model (the same file as the Python applier's):
 * {@code {"round": r, "sha256": hex}}, and between the two writes of an
 * update a {@code "pending"} entry with the new round and hash.
 *
 * <p>A missing file is refused unless the device is initialised with an
 * initial round; the round must be an integer in [0, 2^32 - 1] and the hash 64
 * lowercase hex digits. The update is committed in two phases around the
 * model's rename, so after a crash the model's hash says which entry is true.
 */
final class DeviceState {
  private static final long MAX_ROUND = 0xffffffffL;
  private static final int MAX_BYTES = 4096;

  /** A round and the SHA-256 of the model of that round. */
  static final class Entry {
    final long round;
    final byte[] sha256;

    Entry(long round, byte[] sha256) {
      this.round = round;
      this.sha256 = sha256;
    }

    String json() {
      return "{\"round\": " + round + ", \"sha256\": \"" + Format.hex(sha256, 32) + "\"}";
    }
  }

  /** Computes the model's SHA-256 when a pending entry needs it. */
  interface Digest {
    byte[] get() throws IOException;
  }

  private final Path path;
  private Entry current;
  private Entry next;

  DeviceState(Path path) {
    this.path = path;
  }

  private PatchException refuse(String message) {
    return new PatchException(PatchException.Reason.STATE,
        "device state file " + path + ": " + message);
  }

  Entry load(Digest model, Long initialRound) throws PatchException, IOException {
    byte[] raw;
    try {
      if (Files.size(path) > MAX_BYTES) {
        throw refuse("is unreadable (too large); refusing to update without knowing the "
            + "current round");
      }
      raw = Files.readAllBytes(path);
    } catch (NoSuchFileException e) {
      if (initialRound == null) {
        throw new PatchException(PatchException.Reason.STATE, "device state file " + path
            + " does not exist; initialise a new device once with --initial_round=N (the "
            + "round of the model it holds)");
      }
      if (initialRound < 0 || initialRound > MAX_ROUND) {
        throw new PatchException(PatchException.Reason.STATE,
            "--initial_round must be in [0, " + MAX_ROUND + "], got " + initialRound);
      }
      current = new Entry(initialRound, model.get());
      return current;
    }
    if (initialRound != null) {
      throw new PatchException(PatchException.Reason.STATE, "--initial_round initialises a "
          + "new device, but " + path + " already records its round");
    }
    Object doc;
    try {
      doc = Json.parse(new String(raw, StandardCharsets.UTF_8));
    } catch (IllegalArgumentException e) {
      throw refuse("is unreadable (" + e.getMessage() + "); refusing to update without "
          + "knowing the current round");
    }
    Entry state = entry(doc, "the state");
    if (doc instanceof Map && ((Map<?, ?>) doc).containsKey("pending")) {
      // An update was cut off between its two writes: the model's hash says
      // whether its rename happened. Recorded as settled when possible.
      Entry pending = entry(((Map<?, ?>) doc).get("pending"), "the pending update");
      if (Digests.equal(model.get(), pending.sha256)) {
        state = pending;
      }
      try {
        write(state.json());
      } catch (IOException e) {
        // the next load decides again
      }
    }
    current = state;
    return state;
  }

  private Entry entry(Object value, String what) throws PatchException {
    if (!(value instanceof Map)) {
      throw refuse(what + " is not an object");
    }
    Map<?, ?> map = (Map<?, ?>) value;
    Object round = map.get("round");
    if (!(round instanceof BigInteger) || ((BigInteger) round).signum() < 0
        || ((BigInteger) round).bitLength() > 32) {
      throw refuse(what + " has no round in [0, " + MAX_ROUND + "] (got " + round + ")");
    }
    Object digest = map.get("sha256");
    if (!(digest instanceof String) || !((String) digest).matches("[0-9a-f]{64}")) {
      throw refuse(what + " has no 64-digit sha256");
    }
    byte[] sha = new byte[32];
    for (int i = 0; i < 32; i++) {
      sha[i] = (byte) Integer.parseInt(((String) digest).substring(2 * i, 2 * i + 2), 16);
    }
    return new Entry(((BigInteger) round).longValue(), sha);
  }

  /** Records the update as pending (the new model on disk, not yet in place). */
  void prepare(long round, byte[] sha256) throws IOException {
    next = new Entry(round, sha256);
    String now = current.json();
    write(now.substring(0, now.length() - 1) + ", \"pending\": " + next.json() + "}");
  }

  /** Folds the pending entry in; false if the file could not be rewritten (still consistent). */
  boolean commit() {
    try {
      write(next.json());
    } catch (IOException e) {
      return false;
    }
    current = next;
    return true;
  }

  private void write(String json) throws IOException {
    AtomicFiles.write(path, (json + "\n").getBytes(StandardCharsets.UTF_8));
  }
}
