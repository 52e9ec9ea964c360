package org.tfdpu.patch;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.List;

/**
 * Verifies a DPU model patch and applies it to a `.tflite` file, as the Python
 * and C appliers do (PATCH_FORMAT.md, versions 3 to 5).
 *
 * <pre>
 * PatchApplier.Options options = new PatchApplier.Options()
 *     .publicKey(PatchKey.load(keyPath))
 *     .state(Paths.get(model + ".state"));
 * Header applied = PatchApplier.apply(model, patch, model, options);   // in place, safely
 * </pre>
 *
 * <p>In order: the patch's size (bounded by the model's before its body is
 * read), SHA-256 and body hash, its key id and signature (a device without a
 * key refuses every patch unless {@link Options#allowUnsigned} is set), its
 * release time and expiry, the device's round, the model's size and SHA-256;
 * only then are the records decoded, each bounded by the patch's own length
 * and by the model's real weight buffers. The model is streamed a
 * chunk at a time into a temporary file, which is flushed
 * ({@code FileChannel.force}), checked against the result's SHA-256 and renamed
 * over the output. Every refusal is a {@link PatchException}, and the model is
 * then as it was.
 */
public final class PatchApplier {
  /** Which whole-file updates a device takes. */
  public enum WholeFile {
    /** Only from a patch whose signature was verified with the device's key. */
    SIGNED,
    ALWAYS,
    NEVER
  }

  /** How the device applies patches. */
  public static final class Options {
    PatchKey publicKey;
    Ed25519Verifier verifier = Ed25519Verifier.platformOrPure();
    Path state;
    Long initialRound;
    WholeFile wholeFile = WholeFile.SIGNED;
    long lockTimeoutMillis = 60_000;
    boolean allowUnsigned;
    Long now;
    long maxRoundJump = Format.DEFAULT_MAX_ROUND_JUMP;
    long maxPatchBytes = Format.DEFAULT_MAX_PATCH_BYTES;

    /** Accept patches without checking a signature when no key is known (never the default). */
    public Options allowUnsigned(boolean allow) {
      this.allowUnsigned = allow;
      return this;
    }

    /**
     * Seconds since 1970 from a trusted clock; null (the default) for the
     * system clock, 0 for a device without one (no expiry is checked then;
     * release times still never go back).
     */
    public Options now(Long seconds) {
      this.now = seconds;
      return this;
    }

    /** On a device without a key: the most rounds one patch may advance it. */
    public Options maxRoundJump(long rounds) {
      this.maxRoundJump = rounds;
      return this;
    }

    /** The largest update (a whole file) this device reads. */
    public Options maxPatchBytes(long bytes) {
      this.maxPatchBytes = bytes;
      return this;
    }

    long clock() {
      return now != null ? now : System.currentTimeMillis() / 1000;
    }

    /** Patches must be signed with this key's private half. */
    public Options publicKey(PatchKey key) {
      this.publicKey = key;
      return this;
    }

    /** The Ed25519 implementation (default: java.security's, or the plain-Java one without it). */
    public Options verifier(Ed25519Verifier verifier) {
      this.verifier = verifier;
      return this;
    }

    /** The device's state file (round and model hash); null for none. */
    public Options state(Path state) {
      this.state = state;
      return this;
    }

    /** Initialises a new device (no state file yet) whose model belongs to this round. */
    public Options initialRound(Long round) {
      this.initialRound = round;
      return this;
    }

    public Options wholeFile(WholeFile policy) {
      this.wholeFile = policy;
      return this;
    }
  }

  /** Receives the result, a chunk at a time. */
  interface Sink {
    void write(byte[] data, int length) throws IOException;
  }

  /** Bytes of the model processed at a time: a multiple of 8, so no element straddles two. */
  static final int CHUNK = 1 << 16;

  private PatchApplier() {}

  /**
   * Applies `patch` to the model `base`, writing the result to `out` (which may
   * be `base`; null means `base`).
   *
   * @return the applied patch's header (its round, result size and hash)
   */
  public static Header apply(Path base, Path patch, Path out, Options options)
      throws PatchException {
    Path target = out == null ? base : out;
    try {
      target = AtomicFiles.real(target);
    } catch (IOException e) {
      throw io(e.getMessage(), e);
    }
    if (!Files.isReadable(base)) {
      throw new PatchException(PatchException.Reason.IO,
          "cannot read model " + base + ": No such file or directory");
    }
    byte[] patchBytes;
    try {
      patchBytes = Envelope.read(patch, Files.size(base), options.maxPatchBytes);
    } catch (IOException e) {
      throw io("cannot read model " + base + ": " + e.getMessage(), e);
    }
    Path lock = Paths.get((options.state != null ? options.state : target).toString() + ".lock");
    try (FileChannel lockChannel = FileChannel.open(lock, StandardOpenOption.CREATE,
        StandardOpenOption.WRITE)) {
      FileLock held = acquire(lockChannel, lock, options);
      try {
        return applyLocked(base, target, patchBytes, options).header;
      } finally {
        held.release();
      }
    } catch (IOException e) {
      throw io("cannot write " + target + " (" + e.getMessage() + "); the model is unchanged", e);
    }
  }

  private static Applied applyLocked(Path base, Path target, byte[] patchBytes, Options options)
      throws PatchException, IOException {
    try (FileChannel model = FileChannel.open(base, StandardOpenOption.READ)) {
      ModelBytes bytes = ModelBytes.of(model);
      final byte[][] digest = new byte[1][];
      DeviceState.Digest modelDigest = () -> {
        if (digest[0] == null) {
          digest[0] = sha256(bytes);
        }
        return digest[0];
      };
      DeviceState states = options.state != null ? new DeviceState(options.state) : null;
      DeviceState.Entry state = states != null ? states.load(modelDigest, options.initialRound,
          options.publicKey != null ? options.publicKey.raw() : null) : null;
      Path tmp = AtomicFiles.temporary(target);
      try {
        Applied header;
        try (FileChannel output = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
          header = apply(bytes, modelDigest, patchBytes, options, state,
              (data, length) -> {
                ByteBuffer buffer = ByteBuffer.wrap(data, 0, length);
                while (buffer.hasRemaining()) {
                  output.write(buffer);
                }
              });
          output.force(true);
        }
        if (states != null) {
          states.prepare(header.next);
        }
        AtomicFiles.replace(tmp, target);
        if (states != null) {
          states.commit();
        }
        return header;
      } finally {
        Files.deleteIfExists(tmp);
      }
    }
  }

  private static PatchException io(String message, IOException e) {
    return new PatchException(PatchException.Reason.IO, message);
  }

  private static FileLock acquire(FileChannel channel, Path path, Options options)
      throws IOException, PatchException {
    // Two applies to one model would otherwise both verify the same base and
    // both report success, leaving the state and the model disagreeing.
    long deadline = System.currentTimeMillis() + options.lockTimeoutMillis;
    while (true) {
      try {
        FileLock lock = channel.tryLock();
        if (lock != null) {
          return lock;
        }
      } catch (OverlappingFileLockException e) {
        // held by another thread of this process: wait as for another process
      }
      if (System.currentTimeMillis() > deadline) {
        throw new PatchException(PatchException.Reason.IO, "another update of this model is "
            + "still running (lock " + path + " held for " + options.lockTimeoutMillis / 1000
            + " s)");
      }
      try {
        Thread.sleep(50);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new PatchException(PatchException.Reason.IO, "interrupted while waiting for "
            + path);
      }
    }
  }

  static byte[] sha256(ModelBytes model) throws IOException {
    MessageDigest sha = Digests.sha256();
    byte[] chunk = new byte[(int) Math.min(CHUNK, Math.max(1, model.size()))];
    for (long at = 0; at < model.size(); at += CHUNK) {
      int length = (int) Math.min(CHUNK, model.size() - at);
      model.read(at, chunk, 0, length);
      sha.update(chunk, 0, length);
    }
    return sha.digest();
  }

  /** What an apply did: the header, whether a signature was checked, the device's next state. */
  static final class Applied {
    final Header header;
    final boolean verified;
    final DeviceState.Entry next;

    Applied(Header header, boolean verified, DeviceState.Entry next) {
      this.header = header;
      this.verified = verified;
      this.next = next;
    }
  }

  private static PatchException refuse(PatchException.Reason reason, String message) {
    return new PatchException(reason, message);
  }

  /** The key signatures are checked with: the state's (rotations change it), else the caller's. */
  static byte[] trustedKey(Options options, DeviceState.Entry state) throws PatchException {
    byte[] key = options.publicKey != null ? options.publicKey.raw() : null;
    if (state != null && state.key != null) {
      if (key != null && !Digests.equal(key, state.key)) {
        boolean retired = state.isRetired(Format.keyId(key));
        throw refuse(PatchException.Reason.SIGNATURE, "the given public key (key id "
            + Format.hex(Format.keyId(key), 8) + ") " + (retired
            ? "was retired by a key rotation" : "is not the one this device trusts")
            + "; the device state trusts key id " + Format.hex(Format.keyId(state.key), 8));
      }
      key = state.key;
    }
    if (key == null && !options.allowUnsigned) {
      throw refuse(PatchException.Reason.SIGNATURE, "no public key: give the device's key "
          + "(--public_key), or accept unsigned patches explicitly (--allow_unsigned)");
    }
    return key;
  }

  /**
   * Verifies `patch` against the model and writes the result to `sink`; the
   * result's hash is checked after the last write (the caller then discards
   * what it received).
   */
  static Applied apply(ModelBytes base, DeviceState.Digest digest, byte[] patch, Options options,
      DeviceState.Entry state, Sink sink) throws PatchException, IOException {
    Header header = Envelope.open(patch);
    byte[] key = trustedKey(options, state);
    if (key != null) {
      if (!header.signed) {
        throw refuse(PatchException.Reason.SIGNATURE,
            "patch is not signed, but a public key was given");
      }
      if (!Digests.equal(header.keyId, Format.keyId(key))) {
        boolean retired = state != null && state.isRetired(header.keyId);
        throw refuse(PatchException.Reason.SIGNATURE, "patch is signed by "
            + (retired ? "a retired" : "another") + " key (key id " + Format.hex(header.keyId, 8)
            + "; this device trusts " + Format.hex(Format.keyId(key), 8) + ")");
      }
      byte[] signature = java.util.Arrays.copyOfRange(patch, Format.HEADER_SIZE,
          Format.HEADER_SIZE + Format.SIGNATURE_SIZE);
      boolean valid;
      try {
        valid = options.verifier.verify(key, header.bytes, 0, Format.HEADER_SIZE, signature);
      } catch (GeneralSecurityException e) {
        throw refuse(PatchException.Reason.SIGNATURE, "cannot check the signature on this "
            + "platform (" + e.getMessage() + "); plug in an Ed25519Verifier");
      }
      if (!valid) {
        throw refuse(PatchException.Reason.SIGNATURE,
            "patch signature is not valid for this public key");
      }
    }
    long lastRelease = state != null ? state.releaseTime : 0;
    if (Long.compareUnsigned(header.releaseTime, lastRelease) < 0) {
      throw refuse(PatchException.Reason.STALE, "patch was released at "
          + Long.toUnsignedString(header.releaseTime) + ", before the last update this device "
          + "applied (" + Long.toUnsignedString(lastRelease) + "): an older patch cannot "
          + "stand in for a newer one");
    }
    if (header.expires != 0) {
      long now = options.clock();
      if (Long.compareUnsigned(header.expires, header.releaseTime) <= 0) {
        throw refuse(PatchException.Reason.STALE, "patch expires before it is released");
      }
      if (now != 0 && Long.compareUnsigned(header.expires, now) <= 0) {
        throw refuse(PatchException.Reason.STALE, "patch expired at "
            + Long.toUnsignedString(header.expires) + " (the device's time is "
            + Long.toUnsignedString(now) + "): ask the server for a fresh update");
      }
    }
    if (header.round > Format.MAX_ROUND) {
      throw refuse(PatchException.Reason.ROUND, "patch is for round " + header.round
          + ", which is reserved (rounds go up to " + Format.MAX_ROUND + ")");
    }
    byte[] modelSha = digest.get();
    if (Digests.equal(modelSha, header.resultSha256)
        && !Digests.equal(modelSha, header.baseSha256)) {
      throw refuse(PatchException.Reason.ALREADY_APPLIED,
          "patch is already applied: the model is its result");
    }
    if (state != null) {
      if (header.round < state.round || (header.round == state.round && !header.keepsModel())) {
        throw refuse(PatchException.Reason.ROUND, "patch is for round "
            + header.round + " but the device is at round " + state.round
            + " (replayed or downgraded)");
      }
      if (key == null && header.round - state.round > options.maxRoundJump) {
        throw refuse(PatchException.Reason.ROUND, "patch jumps from round " + state.round
            + " to " + header.round + ", more than the " + options.maxRoundJump
            + " rounds an unsigned patch may advance a device");
      }
      if (!Digests.equal(state.sha256, modelSha)) {
        throw refuse(PatchException.Reason.STATE, "the device state describes "
            + "another model (sha256 " + Format.hex(state.sha256, 8) + "..., this model "
            + Format.hex(modelSha, 8) + "...): the model was replaced outside the updater");
      }
    }
    if (base.size() != header.baseSize || !Digests.equal(modelSha, header.baseSha256)) {
      throw refuse(PatchException.Reason.BASE, "patch is for another model "
          + "(base sha256 " + Format.hex(header.baseSha256, 8) + "..., this model "
          + Format.hex(modelSha, 8) + "...)");
    }
    boolean allowWhole = options.wholeFile == WholeFile.ALWAYS
        || (options.wholeFile == WholeFile.SIGNED && key != null);
    List<Records.Record> records = Records.parse(patch, header, () -> Regions.of(base),
        allowWhole, key != null && state != null);
    byte[] nextKey = null;
    if (!records.isEmpty() && records.get(0).kind == Format.KIND_ROTATION) {
      nextKey = records.remove(0).nextKey;
      if (Digests.equal(nextKey, key)) {
        throw refuse(PatchException.Reason.SIGNATURE,
            "the key rotation names the key that signed it");
      }
    }
    MessageDigest result = Digests.sha256();
    if (!records.isEmpty() && records.get(0).kind == Format.KIND_WHOLE_FILE) {
      Records.Record whole = records.get(0);
      byte[] chunk = new byte[CHUNK];
      for (long at = 0; at < whole.count; at += CHUNK) {
        int length = (int) Math.min(CHUNK, whole.count - at);
        System.arraycopy(patch, (int) (whole.valuesAt + at), chunk, 0, length);
        result.update(chunk, 0, length);
        sink.write(chunk, length);
      }
    } else {
      write(base, patch, records, result, sink);
    }
    if (!Digests.equal(result.digest(), header.resultSha256)) {
      throw refuse(PatchException.Reason.RESULT,
          "patched model does not match the patch's result hash; nothing written");
    }
    header.verified = key != null;
    return new Applied(header, key != null, nextState(header, state, key, nextKey));
  }

  private static DeviceState.Entry nextState(Header header, DeviceState.Entry state, byte[] key,
      byte[] nextKey) {
    long last = state != null ? state.releaseTime : 0;
    java.util.List<byte[]> retired = new java.util.ArrayList<byte[]>();
    if (state != null) {
      retired.addAll(state.retired);
    }
    byte[] trusted = key;
    if (nextKey != null) {
      retired.add(Format.keyId(key));
      while (retired.size() > DeviceState.MAX_RETIRED) {
        retired.remove(0);
      }
      trusted = nextKey;
    }
    return new DeviceState.Entry(header.round, header.resultSha256,
        Long.compareUnsigned(header.releaseTime, last) > 0 ? header.releaseTime : last, trusted,
        retired);
  }

  /** One sweep over the base: records are sorted, aligned and never overlap. */
  private static void write(ModelBytes base, byte[] patch, List<Records.Record> records,
      MessageDigest result, Sink sink) throws PatchException, IOException {
    byte[] chunk = new byte[CHUNK];
    int index = 0;
    Records.Cursor cursor = null;
    for (long start = 0; start < base.size(); start += CHUNK) {
      int length = (int) Math.min(CHUNK, base.size() - start);
      base.read(start, chunk, 0, length);
      long end = start + length;
      while (index < records.size()) {
        if (cursor == null) {
          cursor = new Records.Cursor(patch, records.get(index));
          if (!cursor.next()) {
            throw new IllegalStateException("a validated record has no element");
          }
        }
        Records.Record record = cursor.record;
        long at = record.offset + cursor.position * record.size;
        if (at >= end) {
          break;
        }
        cursor.write(chunk, (int) (at - start));
        if (!cursor.next()) {
          cursor = null;
          index++;
        }
      }
      result.update(chunk, 0, length);
      sink.write(chunk, length);
    }
  }
}
