package org.tfdpu.patch;

import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * What an app needs to keep an on-device model updated: first launch, download,
 * verify, apply, and swapping the interpreter while other threads run it.
 *
 * <pre>
 * // Kotlin, once (e.g. in Application.onCreate):
 * val updater = ModelUpdater.open(
 *     File(filesDir, "model.tflite").toPath(),
 *     { assets.open("model.tflite") }, BUNDLED_ROUND,
 *     PatchApplier.Options().publicKey(PatchKey.of(PUBLIC_KEY)),
 *     { path -> Interpreter(path.toFile()) })
 * // Any thread, any time:
 * val scores = updater.use { it.run(input, output); output }
 * // A background job:
 * updater.update { round, _ -> URL("$SERVER/patch?from=$round").openStream() }
 * </pre>
 *
 * <p>The interpreter type is the app's ({@code T}: LiteRT's {@code Interpreter},
 * or anything {@link AutoCloseable}), so this library does not depend on a
 * runtime. The model file is never changed in place: an update is written to a
 * new file, checked and renamed over the old name, so an interpreter that
 * memory-mapped the old file keeps reading the old bytes until it is closed.
 * The new interpreter is opened before the swap; threads that took the old one
 * finish with it, and the last of them closes it (on its own thread); new
 * callers get the new one at once. A refused update changes nothing: the file,
 * the state and the interpreter in use stay as they were.
 *
 * <p>First launch is when the state file ({@code model + ".state"} unless the
 * options name another) does not exist: the bundled model is copied into place
 * (atomically) and the state records its round and hash. A device that lost
 * its state file therefore goes back to the bundled model, whose round it
 * knows, and catches up from there; it never guesses the round of a model it
 * cannot vouch for.
 *
 * @param <T> the interpreter (or any resource opened on the model file)
 */
public final class ModelUpdater<T extends AutoCloseable> implements Closeable {
  /** Opens the app's interpreter on a model file (e.g. {@code Interpreter(path.toFile())}). */
  public interface Factory<T> {
    T open(Path model) throws Exception;
  }

  /** The model bundled with the app (e.g. {@code assets.open("model.tflite")}). */
  public interface Bundled {
    InputStream open() throws IOException;
  }

  /**
   * Where patches come from: the stream of the patch that updates a model of
   * {@code round} with SHA-256 {@code sha256}, or null when there is none.
   */
  public interface PatchSource {
    InputStream next(long round, byte[] sha256) throws IOException;
  }

  /** Work done with the current interpreter (Java 8 has no throwing Function). */
  public interface Work<T, R> {
    R run(T interpreter) throws Exception;
  }

  /** A reference to one interpreter, counted so that it is closed after its last reader. */
  private static final class Handle<T extends AutoCloseable> {
    final T value;
    final long round;
    final byte[] sha256;
    int readers;
    boolean retired;

    Handle(T value, long round, byte[] sha256) {
      this.value = value;
      this.round = round;
      this.sha256 = sha256;
    }
  }

  /**
   * One reader's hold on an interpreter: the interpreter stays open until every
   * lease taken on it is closed, even if an update replaced it meanwhile.
   */
  public final class Lease implements AutoCloseable {
    private final Handle<T> handle;
    private boolean released;

    private Lease(Handle<T> handle) {
      this.handle = handle;
    }

    /** The interpreter; callers sharing it must not run it at once (LiteRT's rule). */
    public T get() {
      return handle.value;
    }

    /** The round of the model this interpreter runs. */
    public long round() {
      return handle.round;
    }

    @Override
    public void close() {
      synchronized (ModelUpdater.this) {
        if (released) {
          return;
        }
        released = true;
        handle.readers--;
      }
      closeIfDone(handle);
    }
  }

  private final Path model;
  private final PatchApplier.Options options;
  private final Factory<T> factory;
  private final Object updates = new Object();
  private Handle<T> current;
  private boolean closed;

  private ModelUpdater(Path model, PatchApplier.Options options, Factory<T> factory) {
    this.model = model;
    this.options = options;
    this.factory = factory;
  }

  /**
   * Opens the model (installing the bundled one on first launch) and its interpreter.
   *
   * @param model where the app keeps its model (app-private storage)
   * @param bundled the model shipped with the app
   * @param bundledRound the round the bundled model belongs to
   * @param options the device's policy: its public key above all; the state
   *     file defaults to {@code model + ".state"}
   * @param factory opens an interpreter on a model file
   */
  public static <T extends AutoCloseable> ModelUpdater<T> open(Path model, Bundled bundled,
      long bundledRound, PatchApplier.Options options, Factory<T> factory)
      throws PatchException {
    model = model.toAbsolutePath();
    if (options.state == null) {
      options.state(Paths.get(model + ".state"));
    }
    if (options.initialRound != null) {
      throw new PatchException(PatchException.Reason.STATE, "the updater initialises the device "
          + "itself (from the bundled model's round); leave initialRound unset");
    }
    ModelUpdater<T> updater = new ModelUpdater<T>(model, options, factory);
    try {
      byte[] sha256;
      long round;
      if (!Files.exists(options.state)) {
        sha256 = install(bundled, model);
        round = bundledRound;
        DeviceState.initialise(options.state, round, sha256,
            options.publicKey != null ? options.publicKey.raw() : null);
      } else {
        final byte[] onDisk = sha256(model);
        DeviceState.Entry state = new DeviceState(options.state).load(() -> onDisk, null, null);
        if (!Digests.equal(state.sha256, onDisk)) {
          // Not reinstalled silently: the state may hold a rotated key and
          // release times that a fresh install would forget.
          throw new PatchException(PatchException.Reason.STATE, "the model " + model + " is not "
              + "the one its state file records (damaged storage?); delete both to reinstall "
              + "the bundled model");
        }
        round = state.round;
        sha256 = onDisk;
      }
      updater.current = new Handle<T>(updater.openInterpreter(model), round, sha256);
    } catch (IOException e) {
      throw new PatchException(PatchException.Reason.IO, "cannot install the bundled model at "
          + model + ": " + e.getMessage());
    }
    return updater;
  }

  /** Copies the bundled model into place atomically; its SHA-256. */
  private static byte[] install(Bundled bundled, Path model)
      throws IOException, PatchException {
    Files.createDirectories(model.getParent());
    Path tmp = AtomicFiles.temporary(model);
    try {
      byte[] sha256;
      try (InputStream in = bundled.open()) {
        sha256 = copy(in, tmp, Long.MAX_VALUE);   // the app's own asset
      }
      AtomicFiles.replace(tmp, model);
      return sha256;
    } finally {
      Files.deleteIfExists(tmp);
    }
  }

  /** Streams `in` into `out` (flushed), refusing more than `limit` bytes; its SHA-256. */
  private static byte[] copy(InputStream in, Path out, long limit)
      throws IOException, PatchException {
    MessageDigest digest = sha256Digest();
    byte[] chunk = new byte[64 * 1024];
    long total = 0;
    try (java.nio.channels.FileChannel channel = java.nio.channels.FileChannel.open(out,
        java.nio.file.StandardOpenOption.WRITE);
        OutputStream stream = java.nio.channels.Channels.newOutputStream(channel)) {
      for (int n = in.read(chunk); n >= 0; n = in.read(chunk)) {
        total += n;
        if (total > limit) {
          throw new PatchException(PatchException.Reason.FORMAT, "the download is larger than "
              + limit + " bytes, more than any update this device accepts");
        }
        digest.update(chunk, 0, n);
        stream.write(chunk, 0, n);
      }
      stream.flush();
      channel.force(true);
    }
    return digest.digest();
  }

  private static MessageDigest sha256Digest() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("no SHA-256 on this platform", e);
    }
  }

  private static byte[] sha256(Path file) throws IOException {
    MessageDigest digest = sha256Digest();
    byte[] chunk = new byte[64 * 1024];
    try (InputStream in = Files.newInputStream(file)) {
      for (int n = in.read(chunk); n >= 0; n = in.read(chunk)) {
        digest.update(chunk, 0, n);
      }
    }
    return digest.digest();
  }

  private T openInterpreter(Path file) throws PatchException {
    try {
      return factory.open(file);
    } catch (Exception e) {
      throw new PatchException(PatchException.Reason.IO, "cannot open an interpreter on " + file
          + ": " + e);
    }
  }

  /** Takes the current interpreter; close the lease when done (try-with-resources, Kotlin's use). */
  public Lease acquire() {
    synchronized (this) {
      if (closed) {
        throw new IllegalStateException("the updater is closed");
      }
      current.readers++;
      return new Lease(current);
    }
  }

  /**
   * Runs `work` with the current interpreter, one call at a time per
   * interpreter (LiteRT's interpreters are not safe to run from two threads at
   * once); an update waits for nobody and is used by the next call.
   */
  public <R> R use(Work<T, R> work) throws Exception {
    try (Lease lease = acquire()) {
      synchronized (lease.handle) {
        return work.run(lease.get());
      }
    }
  }

  /** The round of the model new callers get. */
  public synchronized long round() {
    return current.round;
  }

  /**
   * The SHA-256 of the model new callers get: key GPU or NPU delegate caches
   * (serialized kernels, compiled graphs) by it, so that no cache built for one
   * round's weights is used with another's.
   */
  public synchronized byte[] modelSha256() {
    return current.sha256.clone();
  }

  /**
   * Asks `source` for the patch after the current model and applies it; null
   * when the source has none. See {@link #update(InputStream)}.
   */
  public Header update(PatchSource source) throws PatchException {
    synchronized (updates) {
      long round;
      byte[] sha256;
      synchronized (this) {
        round = current.round;
        sha256 = current.sha256.clone();
      }
      InputStream in;
      try {
        in = source.next(round, sha256);
      } catch (IOException e) {
        throw new PatchException(PatchException.Reason.IO, "cannot download the patch: "
            + e.getMessage());
      }
      if (in == null) {
        return null;
      }
      try (InputStream stream = in) {
        return update(stream);
      } catch (IOException e) {
        throw new PatchException(PatchException.Reason.IO, "cannot download the patch: "
            + e.getMessage());
      }
    }
  }

  /**
   * Downloads a patch (bounded by the options' largest update), verifies it,
   * applies it into a new model file, opens an interpreter on that file and
   * swaps it in. Updates run one at a time; readers are never blocked.
   *
   * @return the applied patch's header
   * @throws PatchException when the patch is refused (nothing changed then)
   */
  public Header update(InputStream patch) throws PatchException {
    synchronized (updates) {
      Path tmp = null;
      try {
        tmp = Files.createTempFile(model.getParent(), "." + model.getFileName(), ".patch");
        copy(patch, tmp, options.maxPatchBytes);
        return update(tmp);
      } catch (IOException e) {
        throw new PatchException(PatchException.Reason.IO, "cannot download the patch: "
            + e.getMessage());
      } finally {
        if (tmp != null) {
          try {
            Files.deleteIfExists(tmp);
          } catch (IOException e) {
            // a leftover hidden file; the next download replaces nothing with it
          }
        }
      }
    }
  }

  /** Applies a patch file already on the device; see {@link #update(InputStream)}. */
  public Header update(Path patch) throws PatchException {
    synchronized (updates) {
      synchronized (this) {
        if (closed) {
          throw new PatchException(PatchException.Reason.IO, "the updater is closed");
        }
      }
      Header header = PatchApplier.apply(model, patch, model, options);
      T fresh = openInterpreter(model);
      Handle<T> old;
      synchronized (this) {
        old = current;
        current = new Handle<T>(fresh, header.round, header.resultSha256());
        old.retired = true;
      }
      closeIfDone(old);
      return header;
    }
  }

  /** Closes a retired interpreter once no lease holds it (on the caller's thread). */
  private void closeIfDone(Handle<T> handle) {
    synchronized (this) {
      if (!handle.retired || handle.readers > 0) {
        return;
      }
      handle.readers = -1;   // closed: never closed twice
    }
    try {
      handle.value.close();
    } catch (Exception e) {
      // the old interpreter failed to release its resources; the new one is in use
    }
  }

  /** Retires the current interpreter: closed now, or by its last lease. */
  @Override
  public void close() {
    Handle<T> last;
    synchronized (this) {
      if (closed) {
        return;
      }
      closed = true;
      last = current;
      last.retired = true;
    }
    closeIfDone(last);
  }
}
