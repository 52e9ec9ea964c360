import java.io.ByteArrayInputStream;
import java.io.InputStream;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.tfdpu.patch.Header;
import org.tfdpu.patch.ModelUpdater;
import org.tfdpu.patch.PatchApplier;
import org.tfdpu.patch.PatchException;
import org.tfdpu.patch.PatchKey;

/**
 * ModelUpdater over a signed chain while reader threads run the whole time.
 *
 * <p>Arguments: FOLDER KEY BUNDLED PATCH... (in order), then "--" and the
 * server's model of each round, the last being the final one. The
 * "interpreter" memory-maps the model file, as LiteRT does, and every read
 * hashes the mapped bytes: they must be one of the server's models, the one
 * the interpreter opened, and the interpreter must not have been closed.
 * Prints "reads=R updates=U opened=O closed=C" and exits 0, or exits 1 with
 * what went wrong.
 */
public final class UpdaterChain {
  static final Set<String> SERVER = new HashSet<String>();
  static final AtomicInteger OPENED = new AtomicInteger();
  static final AtomicInteger CLOSED = new AtomicInteger();
  static final AtomicReference<String> FAILURE = new AtomicReference<String>();

  static String hex(byte[] bytes) {
    StringBuilder out = new StringBuilder();
    for (byte b : bytes) {
      out.append(String.format("%02x", b & 0xff));
    }
    return out.toString();
  }

  static String sha256(java.nio.ByteBuffer data) throws Exception {
    MessageDigest digest = MessageDigest.getInstance("SHA-256");
    digest.update(data.duplicate());
    return hex(digest.digest());
  }

  static void fail(String what) {
    FAILURE.compareAndSet(null, what);
  }

  /** A stand-in for LiteRT's Interpreter with its file handling: a read-only memory map. */
  static final class MappedModel implements AutoCloseable {
    final MappedByteBuffer bytes;
    final String sha256;
    volatile boolean closed;

    MappedModel(Path file) throws Exception {
      try (FileChannel channel = FileChannel.open(file, StandardOpenOption.READ)) {
        bytes = channel.map(FileChannel.MapMode.READ_ONLY, 0, channel.size());
      }
      sha256 = sha256(bytes);
      if (!SERVER.contains(sha256)) {
        fail("opened a model that is none of the server's: " + sha256);
      }
      OPENED.incrementAndGet();
    }

    /** One "inference": every byte of the model, read through the map. */
    int run() throws Exception {
      if (closed) {
        fail("a reader ran a closed interpreter");
      }
      String now = sha256(bytes);
      if (!now.equals(sha256)) {
        fail("the mapped model changed under its interpreter (" + now + ")");
      }
      return bytes.get(0);
    }

    @Override
    public void close() {
      if (closed) {
        fail("an interpreter was closed twice");
      }
      closed = true;
      CLOSED.incrementAndGet();
    }
  }

  public static void main(String[] args) throws Exception {
    Path folder = Paths.get(args[0]);
    PatchKey key = PatchKey.load(Paths.get(args[1]));
    Path bundled = Paths.get(args[2]);
    List<Path> patches = new ArrayList<Path>();
    int i = 3;
    for (; !args[i].equals("--"); i++) {
      patches.add(Paths.get(args[i]));
    }
    Path last = null;
    for (i++; i < args.length; i++) {
      last = Paths.get(args[i]);
      SERVER.add(hex(MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(last))));
    }
    Path model = folder.resolve("model.tflite");
    ModelUpdater<MappedModel> updater = ModelUpdater.open(model,
        () -> Files.newInputStream(bundled), 0, new PatchApplier.Options().publicKey(key),
        MappedModel::new);
    if (updater.round() != 0 || !Files.exists(Paths.get(model + ".state"))) {
      fail("first launch did not install the bundled model and its state");
    }
    AtomicBoolean stop = new AtomicBoolean();
    AtomicInteger reads = new AtomicInteger();
    List<Thread> readers = new ArrayList<Thread>();
    for (int r = 0; r < 3; r++) {
      Thread reader = new Thread(() -> {
        while (!stop.get()) {
          try {
            updater.use(MappedModel::run);
            reads.incrementAndGet();
          } catch (Exception e) {
            fail("a reader failed: " + e);
          }
        }
      });
      reader.start();
      readers.add(reader);
    }
    // A reader that holds its interpreter across an update: it must stay open
    // until this lease is closed, and be closed right after.
    ModelUpdater<MappedModel>.Lease held = updater.acquire();
    int updates = 0;
    for (int p = 0; p < patches.size(); p++) {
      Thread.sleep(50);
      byte[] patch = Files.readAllBytes(patches.get(p));
      Header header;
      if (p % 2 == 0) {
        header = updater.update(new ByteArrayInputStream(patch));
      } else {
        final long expected = updater.round();
        header = updater.update((round, sha256) -> {
          if (round != expected) {
            fail("the source was asked for round " + round + ", not " + expected);
          }
          return new ByteArrayInputStream(patch);
        });
      }
      updates++;
      if (header.round != updater.round() || !header.verified()) {
        fail("round " + updater.round() + " after applying patch " + header.round);
      }
      if (p == 0) {
        if (held.get().closed) {
          fail("an interpreter was closed while a lease held it");
        }
        held.get().run();
        held.close();
        // Readers that took it just before the swap may still be finishing.
        for (int wait = 0; wait < 100 && !held.get().closed; wait++) {
          Thread.sleep(10);
        }
        if (!held.get().closed) {
          fail("the replaced interpreter was not closed by its last lease");
        }
      }
      // The same patch again: refused, nothing changes.
      long round = updater.round();
      try {
        updater.update(new ByteArrayInputStream(patch));
        fail("a replayed patch was applied");
      } catch (PatchException e) {
        if (updater.round() != round) {
          fail("a refused patch changed the round");
        }
      }
    }
    // No update: the source has none.
    if (updater.update((round, sha256) -> (InputStream) null) != null) {
      fail("an empty source applied something");
    }
    Thread.sleep(50);
    stop.set(true);
    for (Thread reader : readers) {
      reader.join();
    }
    if (!java.util.Arrays.equals(Files.readAllBytes(model), Files.readAllBytes(last))) {
      fail("the final model is not the server's");
    }
    int closedBefore = CLOSED.get();
    updater.close();
    // A second open: the state is there, the updater resumes at its round.
    ModelUpdater<MappedModel> again = ModelUpdater.open(model,
        () -> { throw new java.io.IOException("the bundled model must not be read again"); },
        0, new PatchApplier.Options().publicKey(key), MappedModel::new);
    if (again.round() != patches.size() || !hex(again.modelSha256()).equals(
        hex(MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(last))))) {
      fail("reopened at round " + again.round());
    }
    again.close();
    if (closedBefore != OPENED.get() - 2 || CLOSED.get() != OPENED.get()) {
      fail("interpreters left open: opened " + OPENED.get() + ", closed " + CLOSED.get()
          + " (" + closedBefore + " before close)");
    }
    if (FAILURE.get() != null) {
      System.out.println("FAILED: " + FAILURE.get());
      System.exit(1);
    }
    System.out.println("reads=" + reads.get() + " updates=" + updates + " opened="
        + OPENED.get() + " closed=" + CLOSED.get());
  }
}
