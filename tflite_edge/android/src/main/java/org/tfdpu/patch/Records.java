package org.tfdpu.patch;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The records of a patch: parsed, bounded and fully decoded once to validate
 * them (nothing is kept per element), then decoded again while writing.
 */
final class Records {
  /** Supplies the base's writable buffers, read at the first elements record. */
  interface RegionSource {
    Map<Long, Regions.Region> get() throws PatchException, IOException;
  }

  /** One record's fields (a whole-file record uses `dataAt` and `count`). */
  static final class Record {
    int kind;
    int type;
    int size;
    int coding;
    int k;
    int valueCoding;
    int valueK;
    long buffer;
    long offset;
    long count;
    long changed;
    int positionsAt;
    long positionBytes;
    int valuesAt;
    long valueBytes;
    long row;
    byte[] nextKey;

    long span() {
      return count * size;
    }
  }

  private Records() {}

  private static PatchException bad(String message) {
    return new PatchException(PatchException.Reason.RECORD, message);
  }

  static List<Record> parse(byte[] patch, Header header, RegionSource regions,
      boolean allowWholeFile, boolean allowRotation) throws PatchException, IOException {
    int at = header.bodyStart();
    int end = header.bodyEnd();
    List<Record> records = new ArrayList<Record>();
    Map<Long, Regions.Region> known = null;   // a whole-file patch needs none
    long previousEnd = 0;
    for (long r = 0; r < header.recordCount; r++) {
      if (at + 1 > end) {
        throw bad("patch body ends before its last record");
      }
      int kind = Format.u8(patch, at);
      Record record;
      if (kind == Format.KIND_WHOLE_FILE) {
        record = wholeFile(patch, at, end, header, allowWholeFile);
      } else if (kind == Format.KIND_ROTATION) {
        record = rotation(patch, at, end, allowRotation, records.isEmpty());
      } else if (kind == Format.elementsKind(header.version)) {
        if (known == null) {
          known = regions.get();
        }
        record = elements(patch, at, end, known, header.version);
      } else {
        throw bad("unknown record kind " + kind + " in a version-" + header.version + " patch");
      }
      if (record.offset < previousEnd) {
        throw bad("records overlap or are not sorted by offset");
      }
      previousEnd = record.offset + record.span();
      records.add(record);
      at = record.kind == Format.KIND_WHOLE_FILE ? end
          : record.kind == Format.KIND_ROTATION ? at + Format.ROTATION_HEADER
          : (int) (record.valuesAt + record.valueBytes);
    }
    if (at != end) {
      throw bad("patch body has " + (end - at) + " stray bytes after its records");
    }
    boolean whole = !records.isEmpty() && records.get(0).kind == Format.KIND_WHOLE_FILE;
    if (!whole && header.baseSize != header.resultSize) {
      throw bad("patch changes the file size; only a whole-file update may");
    }
    if (records.size() == 1 && records.get(0).kind == Format.KIND_ROTATION
        && !header.keepsModel()) {
      throw bad("a patch that only rotates the key must leave the model as it is");
    }
    for (Record record : records) {
      if (record.kind == Format.KIND_ELEMENTS) {
        Cursor cursor = new Cursor(patch, record);
        while (cursor.next()) {
          // decoding every code is the check
        }
        cursor.end();
      }
    }
    return records;
  }

  private static Record rotation(byte[] patch, int at, int end, boolean allowed, boolean first)
      throws PatchException {
    if (!allowed) {
      throw new PatchException(PatchException.Reason.SIGNATURE, "patch rotates the signing "
          + "key, which only a signed patch verified with the device's key, on a device that "
          + "keeps a state, may do");
    }
    if (!first) {
      throw bad("a key rotation record must be the patch's first record");
    }
    if (at + Format.ROTATION_HEADER > end) {
      throw bad("patch body ends inside a record header");
    }
    for (int i = 1; i < 8; i++) {
      if (patch[at + i] != 0) {
        throw bad("record has non-zero reserved bytes");
      }
    }
    byte[] next = java.util.Arrays.copyOfRange(patch, at + 8, at + Format.ROTATION_HEADER);
    try {
      PatchKey.of(next);
    } catch (PatchException e) {
      throw new PatchException(PatchException.Reason.KEY,
          "the rotation's next key is refused: " + e.getMessage());
    }
    Record record = new Record();
    record.kind = Format.KIND_ROTATION;
    record.nextKey = next;
    return record;
  }

  private static Record wholeFile(byte[] patch, int at, int end, Header header, boolean allowed)
      throws PatchException {
    if (!allowed) {
      throw new PatchException(PatchException.Reason.WHOLE_FILE, "patch replaces the whole "
          + "model, which this device does not accept (whole-file updates are refused by its "
          + "configuration)");
    }
    if (header.recordCount != 1) {
      throw bad("a whole-file record must be the patch's only record");
    }
    if (at + Format.WHOLE_FILE_HEADER > end) {
      throw bad("patch body ends inside a record header");
    }
    if (patch[at + 1] != 0 || patch[at + 2] != 0 || patch[at + 3] != 0) {
      throw bad("record has non-zero reserved bytes");
    }
    long length = Format.u64(patch, at + 4);
    int dataAt = at + Format.WHOLE_FILE_HEADER;
    if (length != header.resultSize || length != end - dataAt) {
      throw bad("whole-file record holds " + Long.toUnsignedString(length) + " bytes; the "
          + "header's result has " + Long.toUnsignedString(header.resultSize) + " and the body "
          + (end - dataAt));
    }
    Record record = new Record();
    record.kind = Format.KIND_WHOLE_FILE;
    record.size = 1;
    record.count = length;
    record.changed = length;
    record.valuesAt = dataAt;
    record.valueBytes = length;
    return record;
  }

  /**
   * An unsigned LEB128 number below 2^32 in its shortest form at `at[0]`, which
   * moves past it (one number, one spelling, in every applier).
   */
  static long varint(byte[] patch, int[] at, int end) throws PatchException {
    long value = 0;
    for (int i = 0; i < 5; i++) {
      if (at[0] + i >= end) {
        throw bad("patch body ends inside a record header");
      }
      int b = patch[at[0] + i] & 0xff;
      value |= (long) (b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) {
        if (i > 0 && b == 0) {
          throw bad("a record number is not in its shortest form");
        }
        if (value > 0xffffffffL) {
          throw bad("a record number exceeds 2^32 - 1");
        }
        at[0] += i + 1;
        return value;
      }
    }
    throw bad("a record number is longer than five bytes");
  }

  private static Record elements(byte[] patch, int at, int end, Map<Long, Regions.Region> known,
      int version) throws PatchException {
    Record r = new Record();
    r.kind = Format.KIND_ELEMENTS;
    int dataAt;
    boolean compact = Format.u8(patch, at) == Format.KIND_COMPACT;
    if (compact) {
      if (at + Format.COMPACT_FIXED > end) {
        throw bad("patch body ends inside a record header");
      }
      int[] cursor = {at + Format.COMPACT_FIXED};
      r.buffer = varint(patch, cursor, end);
      r.changed = varint(patch, cursor, end);
      r.positionBytes = varint(patch, cursor, end);
      r.valueBytes = varint(patch, cursor, end);
      if (Format.u8(patch, at + 2) == Format.COLUMNS) {
        r.row = varint(patch, cursor, end);
      }
      dataAt = cursor[0];   // offset and count: from the base, the buffer's data
    } else {
      if (at + Format.ELEMENTS_HEADER > end) {
        throw bad("patch body ends inside a record header");
      }
      r.buffer = Format.u32(patch, at + 8);
      r.offset = Format.u64(patch, at + 12);
      r.count = Format.u32(patch, at + 20);
      r.changed = Format.u32(patch, at + 24);
      r.positionBytes = Format.u32(patch, at + 28);
      r.valueBytes = Format.u32(patch, at + 32);
      if (patch[at + 6] != 0 || patch[at + 7] != 0) {
        throw bad("record has non-zero reserved bytes");
      }
      dataAt = at + Format.ELEMENTS_HEADER;
    }
    r.type = Format.u8(patch, at + 1);
    r.coding = Format.u8(patch, at + 2);
    r.k = Format.u8(patch, at + 3);
    r.valueCoding = Format.u8(patch, at + 4);
    r.valueK = Format.u8(patch, at + 5);
    // Adaptive codes exist from version 4 on: a version-3 patch means the same
    // to every applier, old or new.
    if (version < 4 && (r.coding == Format.ADAPTIVE || r.valueCoding == Format.VALUES_ADAPTIVE)) {
      throw bad("adaptive codes need patch format version 4, not " + version);
    }
    if (version < 5 && (r.coding == Format.COLUMNS || r.valueCoding == Format.VALUES_SATURATING)) {
      throw bad((r.coding == Format.COLUMNS ? "columns" : "ends")
          + " codes need patch format version 5, not " + version);
    }
    // A Rice parameter is 0..31, and 0 for the codes without one.
    if (r.k > Format.MAX_RICE_PARAMETER || (r.coding != Format.RICE && r.k != 0)
        || r.valueK > Format.MAX_RICE_PARAMETER
        || (r.valueCoding != Format.VALUES_DELTA && r.valueK != 0)) {
      throw bad("record has a Rice parameter out of range (" + r.k + ", " + r.valueK + ")");
    }
    r.size = Format.elementSize(r.type);
    if (r.size == 0) {
      throw bad("record has unknown element type " + r.type);
    }
    Regions.Region region = known.get(r.buffer);
    if (compact && region != null) {
      r.offset = region.offset;
      r.count = region.count();
    }
    if (region == null || region.offset != r.offset || region.count() != r.count
        || region.type != r.type) {
      String where = compact ? Format.typeName(r.type) : r.count + " " + Format.typeName(r.type)
          + " at offset " + Long.toUnsignedString(r.offset);
      throw new PatchException(PatchException.Reason.REGION, "record for buffer " + r.buffer
          + " (" + where + ") is not one of this model's weight or bias buffers; a patch may "
          + "write nowhere else");
    }
    if (r.changed > r.count || r.changed == 0) {
      throw bad("record changes " + r.changed + " of " + r.count + " elements");
    }
    r.positionsAt = dataAt;
    if (r.positionsAt + r.positionBytes + r.valueBytes > end) {
      throw bad("patch body ends inside a record's data");
    }
    r.valuesAt = (int) (r.positionsAt + r.positionBytes);
    // Every count is bounded by the bytes that code it before anything is decoded.
    if (r.valueCoding == Format.VALUES_RAW) {
      if (r.valueBytes != r.changed * r.size) {
        throw bad("raw values do not match the record's element count");
      }
    } else if (r.valueCoding == Format.VALUES_DELTA && r.size <= 4) {
      if (r.changed * (1 + r.valueK) > 8 * r.valueBytes) {
        throw bad("a value stream of " + r.valueBytes + " bytes cannot hold " + r.changed
            + " codes");
      }
    } else if (r.valueCoding == Format.VALUES_SATURATING) {
      if (r.type != Format.TYPE_INT8) {
        throw bad("saturating values are for int8 elements, not " + Format.typeName(r.type));
      }
    } else if (r.valueCoding != Format.VALUES_ADAPTIVE || r.size > 4) {
      // Adaptive codes may cost far less than a bit each: their count is
      // bounded by the buffer's element count, which is real.
      throw bad("unknown value coding " + r.valueCoding);
    }
    if (r.coding == Format.ALL) {
      if (r.changed != r.count || r.positionBytes != 0) {
        throw bad("record codes all " + r.count + " elements but claims " + r.changed
            + " with " + r.positionBytes + " position bytes");
      }
    } else if (r.coding == Format.BITMAP) {
      if (r.positionBytes != (r.count + 7) / 8) {
        throw bad("bitmap has the wrong length or bits past the buffer's end");
      }
    } else if (r.coding == Format.RICE) {
      if (r.changed * (1 + r.k) > 8 * r.positionBytes) {
        throw bad("a Rice stream of " + r.positionBytes + " bytes cannot hold " + r.changed
            + " codes");
      }
    } else if (r.coding == Format.COLUMNS) {
      if (r.row < 1 || r.row > Math.min(r.count, Format.MAX_COLUMNS)) {
        throw bad("a column code's row of " + r.row + " elements is outside 1.."
            + Math.min(r.count, Format.MAX_COLUMNS));
      }
    } else if (r.coding != Format.ADAPTIVE) {
      throw bad("unknown position coding " + r.coding);
    }
    return r;
  }

  /** Walks the changed elements of one elements record, in position order. */
  static final class Cursor {
    private final byte[] patch;
    final Record record;
    private final BitReader positions;
    private final BitReader values;
    private final Adaptive adaptivePositions;
    private final Adaptive adaptiveValues;
    private final Adaptive.Ladder positionModel = new Adaptive.Ladder();
    private final Adaptive.Ladder valueModel = new Adaptive.Ladder();
    private final int[] signModel = {Adaptive.HALF, Adaptive.HALF};
    private int lastSign;
    // version 5: the column code's contexts and per-column counts, the
    // saturating values' end bits
    private final int[] columnModel = new int[9];
    private byte[] columns;
    private long scan;
    private int column;
    private int inRow;
    private final int[] endModel = {Adaptive.HALF, Adaptive.HALF, Adaptive.HALF, Adaptive.HALF};
    private int lastEnd;
    private long index = -1;
    long position = -1;
    private long zigzag;

    Cursor(byte[] patch, Record record) throws PatchException {
      this.patch = patch;
      this.record = record;
      this.positions = new BitReader(patch, record.positionsAt, record.positionBytes);
      this.values = new BitReader(patch, record.valuesAt, record.valueBytes);
      // Adaptive codes learn within the record: both sides start from even odds.
      this.adaptivePositions = record.coding == Format.ADAPTIVE || record.coding == Format.COLUMNS
          ? new Adaptive(patch, record.positionsAt, record.positionBytes) : null;
      this.adaptiveValues = record.valueCoding == Format.VALUES_ADAPTIVE
          || record.valueCoding == Format.VALUES_SATURATING
          ? new Adaptive(patch, record.valuesAt, record.valueBytes) : null;
      if (record.coding == Format.COLUMNS) {
        java.util.Arrays.fill(columnModel, Adaptive.HALF);
        columns = new byte[(int) record.row];
      }
    }

    /** Moves to the next changed element; false after the last. */
    boolean next() throws PatchException {
      if (++index >= record.changed) {
        return false;
      }
      if (record.coding == Format.ALL) {
        position = index;
      } else if (record.coding == Format.BITMAP) {
        do {
          if (position + 1 >= record.count) {
            throw bad("bitmap marks fewer elements than the record claims");
          }
          position++;
        } while (positions.bit() == 0);
      } else if (record.coding == Format.COLUMNS) {
        // one bit per element under its column's and row's counts of changes
        int bit;
        do {
          if (scan >= record.count) {
            throw bad("a column code marks " + index + " of " + record.changed
                + " elements before the buffer ends");
          }
          bit = adaptivePositions.bit(columnModel, columns[column] * 3 + inRow);
          position = scan++;
          if (bit == 1) {
            columns[column] = (byte) Math.min(2, columns[column] + 1);
            inRow = Math.min(2, inRow + 1);
          }
          if (++column == record.row) {
            column = 0;
            inRow = 0;
          }
        } while (bit == 0);
      } else if (adaptivePositions != null) {
        position = position + 1
            + adaptivePositions.ladder(positionModel, record.count - position - 1);
      } else {
        position = position + 1 + positions.rice(record.k, record.count);
        if (position >= record.count) {
          throw bad("position " + position + " is outside a buffer of " + record.count
              + " elements");
        }
      }
      if (record.valueCoding == Format.VALUES_DELTA) {
        zigzag = values.rice(record.valueK, 1L << (8 * record.size));
      } else if (record.valueCoding == Format.VALUES_SATURATING) {
        // the sign of new - old, "the new value is that end of the int8
        // range", then (otherwise) |new - old| - 1 up to 254, modulo 2^8
        lastSign = adaptiveValues.bit(signModel, lastSign);
        lastEnd = adaptiveValues.bit(endModel, 2 * lastEnd + lastSign);
        zigzag = 0;
        if (lastEnd == 0) {
          long magnitude = adaptiveValues.ladder(valueModel, 255) + 1;
          long wrapped = (lastSign == 1 ? 256 - magnitude : magnitude) & 0xff;
          zigzag = wrapped >= 128 ? 2 * (256 - wrapped) - 1 : 2 * wrapped;
        }
      } else if (adaptiveValues != null) {
        // |delta| - 1 as a ladder, then the sign under the previous one's
        long width = 1L << (8 * record.size);
        long magnitude = adaptiveValues.ladder(valueModel, width >>> 1) + 1;
        lastSign = adaptiveValues.bit(signModel, lastSign);
        zigzag = lastSign == 1 ? 2 * magnitude - 1 : 2 * magnitude;
        if (zigzag >= width) {
          throw bad("an adaptive delta " + zigzag + " does not fit a " + record.size
              + "-byte element");
        }
      }
      return true;
    }

    /** After the last element: no stray bits in either stream. */
    void end() throws PatchException {
      if (adaptivePositions != null) {
        adaptivePositions.finish();
      } else if (record.coding != Format.ALL) {
        positions.end(record.coding == Format.RICE);
      }
      if (adaptiveValues != null) {
        adaptiveValues.finish();
      } else if (record.valueCoding == Format.VALUES_DELTA) {
        values.end(true);
      }
    }

    /** Writes the current element's new bytes over its old ones at `out[at]`. */
    void write(byte[] out, int at) {
      int size = record.size;
      if (record.valueCoding == Format.VALUES_RAW) {
        System.arraycopy(patch, (int) (record.valuesAt + index * size), out, at, size);
        return;
      }
      if (record.valueCoding == Format.VALUES_SATURATING && lastEnd == 1) {
        out[at] = (byte) (lastSign == 1 ? -127 : 127);
        return;
      }
      // (new - old) modulo the element width, zigzag-mapped: 0, -1, 1, -2, ...
      long mask = size == 8 ? -1L : (1L << (8 * size)) - 1;
      long step = (zigzag & 1) == 1 ? (mask - ((zigzag + 1) >>> 1) + 1) & mask : zigzag >>> 1;
      long old = 0;
      for (int i = 0; i < size; i++) {
        old |= (out[at + i] & 0xffL) << (8 * i);
      }
      long value = (old + step) & mask;
      for (int i = 0; i < size; i++) {
        out[at + i] = (byte) (value >>> (8 * i));
      }
    }
  }
}
