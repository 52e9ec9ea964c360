package org.tfdpu.patch;

import java.io.IOException;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/**
 * Where a patch may write: the data of the model's weight and bias buffers,
 * found in the base file itself, never taken from the patch
 * (PATCH_FORMAT.md, "Writable buffers").
 *
 * <p>Buffer b is writable when its data is inside the flatbuffer, some
 * operator reads it, every use of every tensor stored in it is as input 1 or
 * 2 of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED operator, and those
 * tensors have one element type. Every read of the flatbuffer is bounds-checked;
 * a malformed model is a {@link PatchException.Reason#MODEL} refusal.
 *
 * <p>A model whose weights are not raw tensors is refused as a whole
 * ({@link PatchException.Reason#NOT_RAW}): TFLite Micro's lookup-table
 * compression (a {@code COMPRESSION_METADATA} entry), an Edge TPU compiled
 * payload (an {@code edgetpu-custom-op} operator), a sparse weight tensor.
 */
final class Regions {
  static final class Region {
    final long buffer;
    final long offset;
    final long length;
    final int type;

    Region(long buffer, long offset, long length, int type) {
      this.buffer = buffer;
      this.offset = offset;
      this.length = length;
      this.type = type;
    }

    long count() {
      return length / Format.elementSize(type);
    }
  }

  private static final int CONV_2D = 3;
  private static final int DEPTHWISE_CONV_2D = 4;
  private static final int FULLY_CONNECTED = 9;

  private static final byte[] COMPRESSION_METADATA = ascii("COMPRESSION_METADATA");
  private static final byte[] EDGETPU_OPERATOR = ascii("edgetpu-custom-op");

  private static byte[] ascii(String text) {
    return text.getBytes(java.nio.charset.StandardCharsets.US_ASCII);
  }

  private static PatchException notRaw(String cause) {
    return new PatchException(PatchException.Reason.NOT_RAW, "the model's weights are not raw "
        + "tensors (" + cause + "): element patches cannot rewrite them; send a signed "
        + "whole-file update");
  }

  private final ModelBytes model;
  private final long size;
  private final byte[] scratch = new byte[8];

  private Regions(ModelBytes model) {
    this.model = model;
    this.size = model.size();
  }

  /** The writable buffers of the model, by buffer index. */
  static Map<Long, Region> of(ModelBytes model) throws PatchException, IOException {
    return new Regions(model).compute();
  }

  private PatchException malformed(String what) {
    return new PatchException(PatchException.Reason.MODEL,
        "the model is not a valid TFLite flatbuffer (" + what + ")");
  }

  private long unsigned(long at, int width) throws PatchException, IOException {
    if (at < 0 || at + width > size) {
      throw malformed("a reference points outside the file");
    }
    model.read(at, scratch, 0, width);
    long value = 0;
    for (int i = 0; i < width; i++) {
      value |= (scratch[i] & 0xffL) << (8 * i);
    }
    return value;
  }

  private long signed32(long at) throws PatchException, IOException {
    return (int) unsigned(at, 4);
  }

  /** Absolute position of a table's field, 0 when it is absent. */
  private long field(long table, int number) throws PatchException, IOException {
    long vtable = table - signed32(table);
    long vtableSize = unsigned(vtable, 2);
    int slot = 4 + 2 * number;
    if (vtableSize < 4 || slot + 2 > vtableSize) {
      return 0;
    }
    long relative = unsigned(vtable + slot, 2);
    return relative == 0 ? 0 : table + relative;
  }

  private long scalar(long table, int number, int width, boolean signed)
      throws PatchException, IOException {
    long at = field(table, number);
    if (at == 0) {
      return 0;
    }
    long value = unsigned(at, width);
    if (signed && width < 8 && (value >> (8 * width - 1)) != 0) {
      value -= 1L << (8 * width);
    }
    return value;
  }

  private long indirect(long at) throws PatchException, IOException {
    return at + unsigned(at, 4);
  }

  /** {first element, length} of a vector field; {0, 0} when absent. */
  private long[] vector(long table, int number, int width) throws PatchException, IOException {
    long at = field(table, number);
    if (at == 0) {
      return new long[] {0, 0};
    }
    long start = indirect(at);
    long length = unsigned(start, 4);
    if (start + 4 + length * width > size) {
      throw malformed("a vector runs past the end of the file");
    }
    return new long[] {start + 4, length};
  }

  private long tableAt(long[] vector, long index) throws PatchException, IOException {
    if (index < 0 || index >= vector[1]) {
      throw malformed("index " + index + " of a " + vector[1] + "-entry table");
    }
    return indirect(vector[0] + 4 * index);
  }

  /** Whether a string field holds exactly `expected` (false when absent). */
  private boolean stringIs(long table, int number, byte[] expected)
      throws PatchException, IOException {
    long[] text = vector(table, number, 1);
    if (text[0] == 0 || text[1] != expected.length) {
      return false;
    }
    byte[] found = new byte[expected.length];
    model.read(text[0], found, 0, found.length);
    return java.util.Arrays.equals(found, expected);
  }

  private void refuseNotRaw(long root, long[] codes) throws PatchException, IOException {
    long[] entries = vector(root, 6, 4);       // Model.metadata
    for (long i = 0; i < entries[1]; i++) {
      if (stringIs(tableAt(entries, i), 0, COMPRESSION_METADATA)) {
        throw notRaw("compressed for TFLite Micro");
      }
    }
    for (long i = 0; i < codes[1]; i++) {      // OperatorCode.custom_code
      if (stringIs(tableAt(codes, i), 1, EDGETPU_OPERATOR)) {
        throw notRaw("compiled for the Edge TPU");
      }
    }
  }

  private long[] ints(long table, int number) throws PatchException, IOException {
    long[] vector = vector(table, number, 4);
    long[] out = new long[(int) vector[1]];
    for (int i = 0; i < out.length; i++) {
      out[i] = signed32(vector[0] + 4L * i);
    }
    return out;
  }

  private Map<Long, Region> compute() throws PatchException, IOException {
    if (size < 8) {
      throw new PatchException(PatchException.Reason.MODEL,
          "not a TFLite model (no TFL3 file identifier)");
    }
    byte[] identifier = new byte[4];
    model.read(4, identifier, 0, 4);
    if (identifier[0] != 'T' || identifier[1] != 'F' || identifier[2] != 'L'
        || identifier[3] != '3') {
      throw new PatchException(PatchException.Reason.MODEL,
          "not a TFLite model (no TFL3 file identifier)");
    }
    long root = unsigned(0, 4);
    long[] codes = vector(root, 1, 4);
    long[] buffers = vector(root, 4, 4);
    refuseNotRaw(root, codes);
    long[] subgraphs = vector(root, 2, 4);
    Set<Long> allowed = new HashSet<Long>();
    Set<Long> refused = new HashSet<Long>();
    Map<Long, Set<Integer>> types = new HashMap<Long, Set<Integer>>();
    for (long s = 0; s < subgraphs[1]; s++) {
      long graph = tableAt(subgraphs, s);
      long[] tensors = vector(graph, 0, 4);
      long[] operators = vector(graph, 3, 4);
      for (long o = 0; o < operators[1]; o++) {
        long operator = tableAt(operators, o);
        long code = tableAt(codes, scalar(operator, 0, 4, false));
        long builtin = Math.max(scalar(code, 0, 1, true), scalar(code, 3, 4, true));
        boolean weights = builtin == CONV_2D || builtin == DEPTHWISE_CONV_2D
            || builtin == FULLY_CONNECTED;
        long[] inputs = ints(operator, 1);
        for (int position = 0; position < inputs.length; position++) {
          note(tensors, inputs[position], weights && (position == 1 || position == 2),
              allowed, refused, types);
        }
        for (int number : new int[] {2, 8}) {   // outputs, intermediates
          for (long index : ints(operator, number)) {
            note(tensors, index, false, allowed, refused, types);
          }
        }
      }
      for (int number : new int[] {1, 2}) {     // the subgraph's inputs and outputs
        for (long index : ints(graph, number)) {
          note(tensors, index, false, allowed, refused, types);
        }
      }
    }
    Map<Long, Region> regions = new HashMap<Long, Region>();
    for (long index : allowed) {
      Set<Integer> kinds = types.get(index);
      if (refused.contains(index) || kinds.size() != 1) {
        continue;
      }
      int type = kinds.iterator().next();
      int itemSize = Format.elementSize(type);
      if (itemSize == 0) {
        continue;
      }
      long buffer = tableAt(buffers, index);
      if (scalar(buffer, 1, 8, false) != 0 || scalar(buffer, 2, 8, false) != 0) {
        continue;   // data stored past the flatbuffer
      }
      long[] data = vector(buffer, 0, 1);
      if (data[1] > 0 && data[0] % itemSize == 0 && data[1] % itemSize == 0) {
        regions.put(index, new Region(index, data[0], data[1], type));
      }
    }
    return regions;
  }

  private void note(long[] tensors, long index, boolean ok, Set<Long> allowed,
      Set<Long> refused, Map<Long, Set<Integer>> types) throws PatchException, IOException {
    if (index < 0) {
      return;   // an optional input left out
    }
    long tensor = tableAt(tensors, index);
    long key = scalar(tensor, 2, 4, false);
    if (key == 0) {
      return;
    }
    if (ok && field(tensor, 6) != 0) {          // Tensor.sparsity
      throw notRaw("a sparse weight tensor");
    }
    (ok ? allowed : refused).add(key);
    Set<Integer> kinds = types.get(key);
    if (kinds == null) {
      kinds = new HashSet<Integer>();
      types.put(key, kinds);
    }
    kinds.add((int) scalar(tensor, 1, 1, false));
  }
}
