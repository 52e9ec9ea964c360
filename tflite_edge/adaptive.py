"""Adaptive codes of format 4: a binary range coder with learned bit probabilities.

The gaps between changed positions and the sizes of the int8 changes follow
no fixed law: positions cluster (a few input features and units take most
changes), so gaps mix many short ones with a long tail, which one Rice
parameter per record codes poorly. Each value here is written as a ladder:
its length class n = bitlen(v + 1) in unary, then the bits below the
leading one, the first three of them under probabilities learned per class
(classes from 16 up share theirs) and bit, the rest at one half. Every bit is range-coded with a probability
that adapts as the record is decoded, so the code learns each record's own
distribution, both sides holding the same counts.

The coder is the carry-less binary range coder familiar from LZMA: 32-bit
range, 12-bit probabilities that move 1/32 of the way to each bit seen,
one byte shifted out whenever the range falls below 2^24. A stream is
exactly the encoder's output: the decoder must consume every byte and no
more, and its first byte is zero. `PATCH_FORMAT.md` ("Adaptive codes") is
the specification the C and JVM appliers implement bit for bit.
"""

import math
from typing import List, Sequence

import numpy as np

from tflite_edge.errors import PatchError

PROBABILITY_BITS = 12
ONE = 1 << PROBABILITY_BITS          # probabilities are of a zero bit, in 1/4096
HALF = ONE // 2
ADAPT_SHIFT = 5
TOP = 1 << 24
MASK32 = 0xFFFFFFFF
CLASSES = 33                         # bitlen(v + 1) for v < 2^32
TREE_BITS = 3                        # mantissa bits coded under learned probabilities
TREE_NODES = (1 << TREE_BITS) - 1
# Classes 16 and up share one tree: gaps and changes of 2^15 and more are
# rare, and a microcontroller keeps the trees in RAM.
TREES = 16
MIN_STREAM = 5                       # the flush alone writes five bytes


class Ladder:
    """The probabilities of one ladder code: unary classes, then a mantissa tree per class."""

    __slots__ = ("unary", "tree")

    def __init__(self):
        self.unary = [HALF] * CLASSES
        self.tree = [[HALF] * TREE_NODES for _ in range(TREES)]


class Encoder:
    """Range-codes bits into `out` (a bytearray)."""

    def __init__(self):
        self.out = bytearray()
        self.low = 0
        self.range = MASK32
        self.cache = 0
        self.pending = 1

    def _shift_low(self):
        if self.low < 0xFF000000 or self.low > MASK32:
            carry = self.low >> 32
            byte = self.cache
            while True:
                self.out.append((byte + carry) & 0xFF)
                byte = 0xFF
                self.pending -= 1
                if not self.pending:
                    break
            self.cache = (self.low >> 24) & 0xFF
        self.pending += 1
        self.low = (self.low & 0x00FFFFFF) << 8

    def bit(self, probabilities: List[int], index: int, bit: int) -> None:
        """Codes `bit` with probabilities[index] (of a zero), then adapts it."""
        p = probabilities[index]
        bound = (self.range >> PROBABILITY_BITS) * p
        if bit:
            self.low += bound
            self.range -= bound
            probabilities[index] = p - (p >> ADAPT_SHIFT)
        else:
            self.range = bound
            probabilities[index] = p + ((ONE - p) >> ADAPT_SHIFT)
        while self.range < TOP:
            self.range = (self.range << 8) & MASK32
            self._shift_low()

    def fixed(self, bit: int) -> None:
        """Codes `bit` at probability one half, learning nothing."""
        bound = (self.range >> PROBABILITY_BITS) * HALF
        if bit:
            self.low += bound
            self.range -= bound
        else:
            self.range = bound
        while self.range < TOP:
            self.range = (self.range << 8) & MASK32
            self._shift_low()

    def ladder(self, model: Ladder, value: int) -> None:
        """Codes value >= 0 (below 2^32) as its class in unary, then its mantissa."""
        n = (value + 1).bit_length()
        unary = model.unary
        for i in range(n - 1):
            self.bit(unary, i, 1)
        self.bit(unary, n - 1, 0)
        rest = value + 1 - (1 << (n - 1))
        tree, node = model.tree[min(n, TREES) - 1], 1
        for j in range(n - 2, -1, -1):
            bit = (rest >> j) & 1
            if node <= TREE_NODES:
                self.bit(tree, node - 1, bit)
                node = 2 * node + bit
            else:
                self.fixed(bit)

    def finish(self) -> bytes:
        for _ in range(5):
            self._shift_low()
        return bytes(self.out)


class Decoder:
    """Decodes what `Encoder` wrote; every inconsistency is a PatchError."""

    def __init__(self, data: bytes):
        if len(data) < MIN_STREAM or data[0] != 0:
            raise PatchError("an adaptive stream is shorter than 5 bytes or does not start "
                             "with a zero byte")
        self.data = data
        self.code = int.from_bytes(data[1:5], "big")
        self.range = MASK32
        self.at = 5
        if self.code >= self.range:
            raise PatchError("an adaptive stream starts outside its range")

    def _normalize(self):
        while self.range < TOP:
            if self.at >= len(self.data):
                raise PatchError("an adaptive stream ends before its last code")
            self.range = (self.range << 8) & MASK32
            self.code = ((self.code << 8) | self.data[self.at]) & MASK32
            self.at += 1

    def bit(self, probabilities: List[int], index: int) -> int:
        p = probabilities[index]
        bound = (self.range >> PROBABILITY_BITS) * p
        if self.code < bound:
            self.range = bound
            probabilities[index] = p + ((ONE - p) >> ADAPT_SHIFT)
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            probabilities[index] = p - (p >> ADAPT_SHIFT)
            bit = 1
        self._normalize()
        return bit

    def fixed(self) -> int:
        bound = (self.range >> PROBABILITY_BITS) * HALF
        if self.code < bound:
            self.range = bound
            bit = 0
        else:
            self.code -= bound
            self.range -= bound
            bit = 1
        self._normalize()
        return bit

    def ladder(self, model: Ladder, limit: int) -> int:
        """A value below `limit` (at most 2^32); a longer class or larger value is refused.

        The bits are decoded inline, as `bit` and `fixed` do, with the
        decoder's state in locals: this loop is the Python applier's
        bottleneck on format-4 patches.
        """
        classes = limit.bit_length()   # the longest class a value below limit can have
        data, at, end = self.data, self.at, len(self.data)
        code, range_ = self.code, self.range
        unary, n = model.unary, 0
        rest = 0
        tree = node = None
        steps = -1    # mantissa bits left; -1 while the class is being read
        while True:
            if steps < 0:
                probabilities, index = unary, n
            elif steps == 0:
                break
            elif node <= TREE_NODES:
                probabilities, index = tree, node - 1
            else:
                probabilities = None
            p = probabilities[index] if probabilities is not None else HALF
            bound = (range_ >> PROBABILITY_BITS) * p
            if code < bound:
                range_ = bound
                if probabilities is not None:
                    probabilities[index] = p + ((ONE - p) >> ADAPT_SHIFT)
                bit = 0
            else:
                code -= bound
                range_ -= bound
                if probabilities is not None:
                    probabilities[index] = p - (p >> ADAPT_SHIFT)
                bit = 1
            while range_ < TOP:
                if at >= end:
                    raise PatchError("an adaptive stream ends before its last code")
                range_ = (range_ << 8) & MASK32
                code = ((code << 8) | data[at]) & MASK32
                at += 1
            if steps < 0:
                n += 1
                if bit:
                    if n >= classes:
                        raise PatchError("an adaptive code is longer than its limit allows")
                    continue
                tree, node, steps = model.tree[min(n, TREES) - 1], 1, n - 1
                continue
            if node <= TREE_NODES:
                node = 2 * node + bit
            rest = 2 * rest + bit
            steps -= 1
        self.at, self.code, self.range = at, code, range_
        value = (1 << (n - 1)) + rest - 1
        if value >= limit:
            raise PatchError(f"an adaptive code decodes {value}, not below {limit}")
        return value

    def finish(self) -> None:
        """The stream must end exactly where its codes do."""
        if self.at != len(self.data):
            raise PatchError(f"an adaptive stream has {len(self.data) - self.at} bytes after "
                             "its last code")


def encode_positions(positions: Sequence[int]) -> bytes:
    """Sorted distinct positions as ladder-coded gaps (g_i = p_i - p_(i-1) - 1, p_(-1) = -1)."""
    encoder, model, previous = Encoder(), Ladder(), -1
    for position in np.asarray(positions, np.int64).tolist():
        encoder.ladder(model, position - previous - 1)
        previous = position
    return encoder.finish()


def decode_positions(data: bytes, count: int, changed: int) -> np.ndarray:
    """`changed` strictly increasing positions below `count`.

    Raises:
      PatchError: a malformed stream, or a position at or past `count`.
    """
    decoder, model = Decoder(data), Ladder()
    out = np.empty(changed, np.int64)
    previous = -1
    for i in range(changed):
        previous += decoder.ladder(model, count - previous - 1) + 1
        out[i] = previous
    decoder.finish()
    return out


def encode_values(zigzag: Sequence[int]) -> bytes:
    """Zigzag-mapped deltas (never 0: a changed element moves) as magnitude and sign."""
    encoder, model, signs, sign = Encoder(), Ladder(), [HALF, HALF], 0
    for z in np.asarray(zigzag, np.uint64).tolist():
        if z == 0:
            raise ValueError("an adaptive value code has no zero delta")
        magnitude = (z + 1) >> 1
        encoder.ladder(model, magnitude - 1)
        # Neighbouring changes tend to move the same way.
        encoder.bit(signs, sign, z & 1)
        sign = z & 1
    return encoder.finish()


def decode_values(data: bytes, changed: int, element_size: int) -> np.ndarray:
    """`changed` zigzag-mapped deltas of elements of `element_size` (<= 4) bytes.

    Raises:
      PatchError: a malformed stream, or a delta outside the element's width.
    """
    decoder, model, signs, sign = Decoder(data), Ladder(), [HALF, HALF], 0
    width = 1 << (8 * element_size)
    out = np.empty(changed, np.uint64)
    for i in range(changed):
        magnitude = decoder.ladder(model, width >> 1) + 1
        sign = decoder.bit(signs, sign)
        zigzag = 2 * magnitude - 1 if sign else 2 * magnitude
        if zigzag >= width:
            raise PatchError(f"an adaptive delta {zigzag} does not fit a "
                             f"{element_size}-byte element")
        out[i] = zigzag
    decoder.finish()
    return out


# Version 5's column code. The changes DPU picks gather in a few input
# features (columns of a weight matrix stored row by row) and, within a row,
# near each other; a gap code sees neither. So each element is one bit, coded
# under the probability of its context: how many changes its column has had
# in earlier rows and its row so far, each counted up to two (nine contexts).
# The bits stop at the last change. A decoder keeps two bits per column, so
# the row length is bounded (MAX_COLUMNS, which sets the C applier's RAM).
MAX_COLUMNS = 2048
COUNT_CAP = 2
ROW_COUNTS = COUNT_CAP + 1           # a row's count of changes: 0, 1 or 2
COLUMN_CONTEXTS = ROW_COUNTS ** 2


def column_contexts(positions: Sequence[int], row: int):
    """The column code's bits and their contexts, per element up to the last change.

    Element p's context is ROW_COUNTS x (changes before it in its column,
    up to COUNT_CAP) + (changes before it in its row, up to COUNT_CAP): what a
    decoder knows when it reaches p.

    Args:
      positions: sorted distinct changed positions (at least one).
      row: the row length R: element p is column p % R.

    Returns:
      (bits, contexts), two arrays of length last position + 1.
    """
    positions = np.asarray(positions, np.int64)
    end = int(positions[-1]) + 1
    grid = np.zeros(-(-end // row) * row, np.int8)
    grid[positions] = 1
    grid = grid.reshape(-1, row)
    column = np.minimum(np.cumsum(grid, axis=0) - grid, COUNT_CAP)
    in_row = np.minimum(np.cumsum(grid, axis=1) - grid, COUNT_CAP)
    return grid.ravel()[:end], (column * ROW_COUNTS + in_row).ravel()[:end]


def encode_columns(positions: Sequence[int], row: int) -> bytes:
    """Sorted distinct positions as per-element bits under column and row contexts.

    Args:
      positions: the changed elements' indices (at least one).
      row: the row length R (1..MAX_COLUMNS): element p is column p % R.
    """
    if not 1 <= row <= MAX_COLUMNS:
        raise ValueError(f"a row of {row} elements is outside 1..{MAX_COLUMNS}")
    encoder, probabilities = Encoder(), [HALF] * COLUMN_CONTEXTS
    bits, contexts = column_contexts(positions, row)
    for bit, context in zip(bits.tolist(), contexts.tolist()):
        encoder.bit(probabilities, context, bit)
    return encoder.finish()


def estimate_columns(positions: Sequence[int], row: int) -> float:
    """Bytes the column code would take with its probabilities fixed per context.

    Trying the code itself costs a range-coded bit per element in Python; a
    writer screens row lengths with this first.
    """
    bits, contexts = column_contexts(positions, row)
    total = 0.0
    for context in range(COLUMN_CONTEXTS):
        chosen = bits[contexts == context]
        n, ones = len(chosen), int(chosen.sum())
        if 0 < ones < n:
            p = ones / n
            total -= n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return total / 8


def decode_columns(data: bytes, count: int, changed: int, row: int) -> np.ndarray:
    """`changed` strictly increasing positions below `count`, coded by `encode_columns`.

    Raises:
      PatchError: a malformed stream, a row length outside 1..min(count,
        MAX_COLUMNS), or fewer than `changed` positions before `count`.
    """
    if not 1 <= row <= min(count, MAX_COLUMNS):
        raise PatchError(f"a column code's row of {row} elements is outside "
                         f"1..{min(count, MAX_COLUMNS)}")
    decoder, contexts = Decoder(data), [HALF] * COLUMN_CONTEXTS
    # A column's count times ROW_COUNTS, so that adding the row's count names the context.
    columns, in_row, column = [0] * row, 0, 0
    out = []
    p = 0
    # The range decoder inline, its state in locals (as in `Decoder.ladder`):
    # this loop runs once per element up to the last change.
    stream, at, end = decoder.data, decoder.at, len(decoder.data)
    code, range_ = decoder.code, decoder.range
    while len(out) < changed:
        if p >= count:
            raise PatchError(f"a column code marks {len(out)} of {changed} elements before "
                             "the buffer ends")
        counted = columns[column]
        index = counted + in_row
        probability = contexts[index]
        bound = (range_ >> PROBABILITY_BITS) * probability
        if code < bound:
            range_ = bound
            contexts[index] = probability + ((ONE - probability) >> ADAPT_SHIFT)
        else:
            code -= bound
            range_ -= bound
            contexts[index] = probability - (probability >> ADAPT_SHIFT)
            out.append(p)
            if counted < ROW_COUNTS * COUNT_CAP:
                columns[column] = counted + ROW_COUNTS
            if in_row < COUNT_CAP:
                in_row += 1
        while range_ < TOP:
            if at >= end:
                raise PatchError("an adaptive stream ends before its last code")
            range_ = (range_ << 8) & MASK32
            code = ((code << 8) | stream[at]) & MASK32
            at += 1
        p += 1
        column += 1
        if column == row:
            column = in_row = 0
    decoder.at, decoder.code, decoder.range = at, code, range_
    decoder.finish()
    return np.array(out, np.int64)


# Version 5's saturating values, for int8 elements. Fine-tuning drives many
# of the few weights it frees to the end of the int8 range (up to half of a
# layer's changes on the MNIST MLP), and such a value costs a full magnitude
# in a delta code. Here each change is its sign first (under the previous
# sign; the sign of new - old, a plain difference), then one bit "the new
# value is the end of the range on that side"
# (+127 or -127, the symmetric int8 range), under the previous element's bit
# and this sign; only other changes code |delta| - 1 as a ladder. Decoding
# needs no old value: an in-place applier that resumes after a power cut
# decodes past chunks it has already rewritten.
INT8_END = 127


def encode_saturating(old: Sequence[int], new: Sequence[int]) -> bytes:
    """The changes old -> new of int8 elements (each new != old)."""
    encoder, model = Encoder(), Ladder()
    signs, ends, sign, end = [HALF, HALF], [HALF] * 4, 0, 0
    for o, n in zip(np.asarray(old, np.int64).tolist(), np.asarray(new, np.int64).tolist()):
        if o == n:
            raise ValueError("a saturating value code has no zero delta")
        bit = 1 if n < o else 0
        encoder.bit(signs, sign, bit)
        sign = bit
        at_end = 1 if n == (-INT8_END if bit else INT8_END) else 0
        encoder.bit(ends, 2 * end + sign, at_end)
        end = at_end
        if not at_end:
            encoder.ladder(model, abs(n - o) - 1)
    return encoder.finish()


def decode_saturating(data: bytes, changed: int):
    """`changed` int8 changes: (zigzag deltas, ends), ends[i] = +-127 where the new
    value is the end of the range (its zigzag is 0) and 0 elsewhere.

    Raises:
      PatchError: a malformed stream, or a difference above 255.
    """
    decoder, model = Decoder(data), Ladder()
    signs, ends, sign, end = [HALF, HALF], [HALF] * 4, 0, 0
    zigzag = np.zeros(changed, np.uint64)
    bounds = np.zeros(changed, np.int8)
    for i in range(changed):
        sign = decoder.bit(signs, sign)
        end = decoder.bit(ends, 2 * end + sign)
        if end:
            bounds[i] = -INT8_END if sign else INT8_END
            continue
        # The change as a plain difference (up to 255 either way): its sign
        # says which end of the range; the element takes it modulo 2^8.
        magnitude = decoder.ladder(model, 255) + 1
        wrapped = (-magnitude if sign else magnitude) % 256
        wrapped -= 256 if wrapped >= 128 else 0
        zigzag[i] = -2 * wrapped - 1 if wrapped < 0 else 2 * wrapped
    decoder.finish()
    return zigzag, bounds
