package org.tfdpu.patch;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;

/** Random access to a model's bytes: a file read a piece at a time, or an array. */
abstract class ModelBytes {
  abstract long size();

  /** Reads exactly `length` bytes at `offset` (within the model) into `out`. */
  abstract void read(long offset, byte[] out, int at, int length) throws IOException;

  static ModelBytes of(final byte[] data) {
    return new ModelBytes() {
      @Override
      long size() {
        return data.length;
      }

      @Override
      void read(long offset, byte[] out, int at, int length) {
        System.arraycopy(data, (int) offset, out, at, length);
      }
    };
  }

  static ModelBytes of(final FileChannel channel) throws IOException {
    final long size = channel.size();
    return new ModelBytes() {
      @Override
      long size() {
        return size;
      }

      @Override
      void read(long offset, byte[] out, int at, int length) throws IOException {
        ByteBuffer target = ByteBuffer.wrap(out, at, length);
        long position = offset;
        while (target.hasRemaining()) {
          int got = channel.read(target, position);
          if (got < 0) {
            throw new IOException("the model file shrank while it was read");
          }
          position += got;
        }
      }
    };
  }
}
