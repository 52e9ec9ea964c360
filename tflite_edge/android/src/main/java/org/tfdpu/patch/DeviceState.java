package org.tfdpu.patch;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Map;

/**
 * The device's record of its model and its trust (the same file as the Python
 * applier's): {@code {"round": r, "sha256": hex, "release_time": t, "key":
 * hex, "retired": [id, ...]}}, and between the two writes of an update a
 * {@code "pending"} entry with the next state.
 *
 * <p>A missing file is refused unless the device is initialised with an
 * initial round; the round must be an integer in [0, 2^32 - 1] and the hash 64
 * lowercase hex digits; anything else (an unknown field, nesting, a byte-order
 * mark, non-ASCII text, more than 4 KiB) is refused as the Python applier
 * refuses it. The update is committed in two phases around the model's
 * rename, so after a crash the model's hash says which entry is true.
 */
final class DeviceState {
  private static final long MAX_ROUND = 0xffffffffL;
  private static final int MAX_BYTES = 4096;
  static final int MAX_RETIRED = 16;
  private static final java.util.List<String> FIELDS =
      java.util.Arrays.asList("round", "sha256", "release_time", "key", "retired");

  /** A round, the SHA-256 of the model of that round, and what the device trusts. */
  static final class Entry {
    final long round;
    final byte[] sha256;
    /** Release time of the last update applied (unsigned 64-bit; 0: none). */
    final long releaseTime;
    /** The key patches must be signed with (null: none recorded). */
    final byte[] key;
    /** Ids of keys retired by rotations, oldest first. */
    final java.util.List<byte[]> retired;

    Entry(long round, byte[] sha256) {
      this(round, sha256, 0, null, new java.util.ArrayList<byte[]>());
    }

    Entry(long round, byte[] sha256, long releaseTime, byte[] key,
        java.util.List<byte[]> retired) {
      this.round = round;
      this.sha256 = sha256;
      this.releaseTime = releaseTime;
      this.key = key;
      this.retired = retired;
    }

    boolean isRetired(byte[] keyId) {
      for (byte[] id : retired) {
        if (Digests.equal(id, keyId)) {
          return true;
        }
      }
      return false;
    }

    String json() {
      StringBuilder out = new StringBuilder("{\"round\": " + round + ", \"sha256\": \""
          + Format.hex(sha256, 32) + "\"");
      if (releaseTime != 0) {
        out.append(", \"release_time\": ").append(Long.toUnsignedString(releaseTime));
      }
      if (key != null) {
        out.append(", \"key\": \"").append(Format.hex(key, 32)).append('"');
      }
      if (!retired.isEmpty()) {
        out.append(", \"retired\": [");
        for (int i = 0; i < retired.size(); i++) {
          out.append(i > 0 ? ", " : "").append('"').append(Format.hex(retired.get(i), 8))
              .append('"');
        }
        out.append(']');
      }
      return out.append('}').toString();
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

  Entry load(Digest model, Long initialRound, byte[] key) throws PatchException, IOException {
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
      current = new Entry(initialRound, model.get(), 0, key, new java.util.ArrayList<byte[]>());
      return current;
    }
    if (initialRound != null) {
      throw new PatchException(PatchException.Reason.STATE, "--initial_round initialises a "
          + "new device, but " + path + " already records its round");
    }
    Object doc;
    try {
      precheck(raw);
      doc = Json.parse(new String(raw, StandardCharsets.US_ASCII));
    } catch (IllegalArgumentException e) {
      throw new PatchException(PatchException.Reason.STATE, "device state file " + path
          + " is unreadable (" + e.getMessage() + "); refusing to update without knowing the "
          + "current round");
    }
    Entry state = entry(doc, "the state", true);
    if (((Map<?, ?>) doc).containsKey("pending")) {
      // An update was cut off between its two writes: the model's hash says
      // whether its rename happened. Recorded as settled when possible.
      Entry pending = entry(((Map<?, ?>) doc).get("pending"), "the pending update", false);
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

  /**
   * Plain printable ASCII and nothing nested deeper than a state can be, as the
   * Python applier checks before its parser sees the text.
   */
  private static void precheck(byte[] raw) {
    int depth = 0;
    boolean inString = false;
    boolean escaped = false;
    for (byte b : raw) {
      if ((b < 0x20 || b > 0x7e) && b != '\t' && b != '\r' && b != '\n') {
        throw new IllegalArgumentException("not plain ASCII JSON (a byte-order mark or other "
            + "bytes)");
      }
    }
    for (byte b : raw) {
      if (escaped) {
        escaped = false;
      } else if (inString) {
        escaped = b == '\\';
        inString = b != '"';
      } else if (b == '"') {
        inString = true;
      } else if (b == '[' || b == '{') {
        if (++depth > 3) {
          throw new IllegalArgumentException("nested deeper than a state can be");
        }
      } else if (b == ']' || b == '}') {
        depth--;
      }
    }
  }

  private static boolean hex(Object value, int digits) {
    return value instanceof String && ((String) value).length() == digits
        && ((String) value).matches("[0-9a-f]*");
  }

  private static byte[] bytes(String hex) {
    byte[] out = new byte[hex.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(hex.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  private Entry entry(Object value, String what, boolean pendingAllowed) throws PatchException {
    if (!(value instanceof Map)) {
      throw refuse(what + " is not an object");
    }
    Map<?, ?> map = (Map<?, ?>) value;
    for (Object name : map.keySet()) {
      if (!FIELDS.contains(name) && !(pendingAllowed && "pending".equals(name))) {
        throw refuse(what + " has an unknown field '" + name + "'");
      }
    }
    Object round = map.get("round");
    if (!(round instanceof BigInteger) || ((BigInteger) round).signum() < 0
        || ((BigInteger) round).bitLength() > 32) {
      throw refuse(what + " has no round in [0, " + MAX_ROUND + "] (got " + round + ")");
    }
    Object digest = map.get("sha256");
    if (!hex(digest, 64)) {
      throw refuse(what + " has no 64-digit sha256");
    }
    Object release = map.containsKey("release_time") ? map.get("release_time")
        : BigInteger.ZERO;
    if (!(release instanceof BigInteger) || ((BigInteger) release).signum() < 0
        || ((BigInteger) release).bitLength() > 64) {
      throw refuse(what + " has a release_time that is not an integer in [0, 2^64) (got "
          + release + ")");
    }
    Object key = map.get("key");
    if (key != null && !hex(key, 64)) {
      throw refuse(what + " has a key that is not 64 hex digits");
    }
    Object retired = map.containsKey("retired") ? map.get("retired")
        : new java.util.ArrayList<Object>();
    java.util.List<byte[]> ids = new java.util.ArrayList<byte[]>();
    if (!(retired instanceof java.util.List)
        || ((java.util.List<?>) retired).size() > MAX_RETIRED) {
      throw refuse(what + " has a retired list that is not at most " + MAX_RETIRED
          + " ids of 16 hex digits");
    }
    for (Object id : (java.util.List<?>) retired) {
      if (!hex(id, 16)) {
        throw refuse(what + " has a retired list that is not at most " + MAX_RETIRED
            + " ids of 16 hex digits");
      }
      ids.add(bytes((String) id));
    }
    if (key != null) {
      try {
        PatchKey.of(bytes((String) key));
      } catch (PatchException e) {
        throw refuse(what + " holds a refused key (" + e.getMessage() + ")");
      }
    }
    return new Entry(((BigInteger) round).longValue(), bytes((String) digest),
        ((BigInteger) release).longValue(), key == null ? null : bytes((String) key), ids);
  }

  /** Writes the state of a new device: its model, the round it belongs to, the key it trusts. */
  static void initialise(Path path, long round, byte[] sha256, byte[] key) throws IOException {
    AtomicFiles.write(path, (new Entry(round, sha256, 0, key,
        new java.util.ArrayList<byte[]>()).json() + "\n").getBytes(StandardCharsets.UTF_8));
  }

  /** Records the update as pending (the new model on disk, not yet in place). */
  void prepare(Entry nextState) throws IOException {
    next = nextState;
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
