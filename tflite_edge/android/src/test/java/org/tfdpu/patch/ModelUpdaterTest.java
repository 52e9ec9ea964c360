package org.tfdpu.patch;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** First launch, leases and refusals of ModelUpdater, without a patch server. */
class ModelUpdaterTest {
  /** An "interpreter" that only records whether it was closed. */
  static final class Probe implements AutoCloseable {
    final Path file;
    boolean closed;

    Probe(Path file) {
      this.file = file;
    }

    @Override
    public void close() {
      assertFalse(closed, "closed twice");
      closed = true;
    }
  }

  private static final byte[] MODEL = "TFL3 stand-in bytes of a bundled model".getBytes(
      java.nio.charset.StandardCharsets.US_ASCII);

  private static ModelUpdater<Probe> open(Path model, List<Probe> opened, byte[] bundled)
      throws PatchException {
    return ModelUpdater.open(model, () -> new ByteArrayInputStream(bundled), 3,
        new PatchApplier.Options().allowUnsigned(true), path -> {
          Probe probe = new Probe(path);
          opened.add(probe);
          return probe;
        });
  }

  @Test
  void firstLaunchInstallsTheBundledModelAndItsState(@TempDir Path dir) throws Exception {
    Path model = dir.resolve("sub").resolve("model.tflite");
    List<Probe> opened = new ArrayList<Probe>();
    ModelUpdater<Probe> updater = open(model, opened, MODEL);
    assertArrayEquals(MODEL, Files.readAllBytes(model));
    String state = new String(Files.readAllBytes(dir.resolve("sub").resolve("model.tflite.state")),
        java.nio.charset.StandardCharsets.US_ASCII);
    assertTrue(state.startsWith("{\"round\": 3, \"sha256\": \""), state);
    assertEquals(3, updater.round());
    updater.close();
    // The second launch reads the state and never the bundled model.
    ModelUpdater<Probe> again = ModelUpdater.open(model, () -> {
      throw new IOException("read again");
    }, 0, new PatchApplier.Options().allowUnsigned(true), Probe::new);
    assertEquals(3, again.round());
    again.close();
  }

  @Test
  void anInterpreterIsClosedByItsLastLease(@TempDir Path dir) throws Exception {
    List<Probe> opened = new ArrayList<Probe>();
    ModelUpdater<Probe> updater = open(dir.resolve("model.tflite"), opened, MODEL);
    ModelUpdater<Probe>.Lease first = updater.acquire();
    ModelUpdater<Probe>.Lease second = updater.acquire();
    updater.close();
    assertFalse(opened.get(0).closed);
    first.close();
    first.close();   // a second close of one lease counts once
    assertFalse(opened.get(0).closed);
    second.close();
    assertTrue(opened.get(0).closed);
    assertThrows(IllegalStateException.class, updater::acquire);
  }

  @Test
  void aRefusedPatchChangesNothing(@TempDir Path dir) throws Exception {
    Path model = dir.resolve("model.tflite");
    List<Probe> opened = new ArrayList<Probe>();
    ModelUpdater<Probe> updater = open(model, opened, MODEL);
    byte[] state = Files.readAllBytes(dir.resolve("model.tflite.state"));
    PatchException e = assertThrows(PatchException.class,
        () -> updater.update(new ByteArrayInputStream(new byte[300])));
    assertEquals(PatchException.Reason.FORMAT, e.reason());
    assertArrayEquals(MODEL, Files.readAllBytes(model));
    assertArrayEquals(state, Files.readAllBytes(dir.resolve("model.tflite.state")));
    assertEquals(1, opened.size());
    assertFalse(opened.get(0).closed);
    assertEquals(null, updater.update((round, sha256) -> null));
    updater.close();
    // Nothing left beside the model: no downloaded patch, no temporary file.
    try (java.util.stream.Stream<Path> files = Files.list(dir)) {
      files.forEach(f -> assertTrue(f.getFileName().toString().startsWith("model.tflite"), f
          .toString()));
    }
  }

  @Test
  void aModelThatIsNotTheOneItsStateRecordsIsRefused(@TempDir Path dir) throws Exception {
    Path model = dir.resolve("model.tflite");
    open(model, new ArrayList<Probe>(), MODEL).close();
    Files.write(model, "something else".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
    PatchException e = assertThrows(PatchException.class,
        () -> open(model, new ArrayList<Probe>(), MODEL));
    assertEquals(PatchException.Reason.STATE, e.reason());
  }
}
