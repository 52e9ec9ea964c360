package org.tfdpu.patch;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;

/**
 * Replacing a file so that a crash leaves the old or the new one: a temporary
 * file in the same folder, flushed, renamed over the target, and the folder
 * flushed. A symbolic link is followed (the file it names is replaced, the
 * link stays) and the file keeps its permissions (a new one: rw-r--r--).
 */
final class AtomicFiles {
  private AtomicFiles() {}

  /**
   * The file a path names, through symbolic links, when it exists; a link to
   * nothing is refused (writing through it would create its target wherever it
   * points), as the Python and C appliers refuse it.
   */
  static Path real(Path path) throws IOException {
    if (Files.isSymbolicLink(path) && !Files.exists(path)) {
      throw new IOException(path + " is a symbolic link to nothing (" + Files.readSymbolicLink(path)
          + "); refusing to create its target");
    }
    return Files.exists(path) ? path.toRealPath() : path.toAbsolutePath();
  }

  /** A new, empty temporary file beside `target`. */
  static Path temporary(Path target) throws IOException {
    Path folder = target.getParent();
    return Files.createTempFile(folder, "." + target.getFileName(), ".partial");
  }

  /** Flushes `tmp`'s permissions and renames it over `target`, flushing the folder. */
  static void replace(Path tmp, Path target) throws IOException {
    try {
      Set<PosixFilePermission> mode = Files.exists(target)
          ? Files.getPosixFilePermissions(target)
          : PosixFilePermissions.fromString("rw-r--r--");
      Files.setPosixFilePermissions(tmp, mode);
    } catch (UnsupportedOperationException e) {
      // not a POSIX file system: the platform's default permissions stay
    }
    try {
      Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    } catch (AtomicMoveNotSupportedException e) {
      throw new IOException("the file system cannot rename " + tmp + " atomically", e);
    }
    try (FileChannel folder = FileChannel.open(target.getParent(), StandardOpenOption.READ)) {
      folder.force(true);
    } catch (IOException e) {
      // some platforms cannot open a folder; the rename itself is atomic
    }
  }

  /** Replaces `target` with `data`. */
  static void write(Path target, byte[] data) throws IOException {
    target = real(target);
    Path tmp = temporary(target);
    try {
      try (FileChannel out = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
        ByteBuffer buffer = ByteBuffer.wrap(data);
        while (buffer.hasRemaining()) {
          out.write(buffer);
        }
        out.force(true);
      }
      replace(tmp, target);
    } finally {
      Files.deleteIfExists(tmp);
    }
  }
}
