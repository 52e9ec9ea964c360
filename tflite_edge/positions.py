"""Position codes: Golomb-Rice on gaps, a bitmap, or (format 4) adaptive gaps.

Rice codes and bitmaps are bit streams packed least-significant bit first.
Positions of n changes among N elements cost log2(C(N, n)) bits if every
set of positions were equally likely; Rice-coded gaps come within a few
percent of that at 0.1-10 % density, a bitmap wins above ~30 %. Real
changes cluster, and the adaptive code (`tflite_edge.adaptive`) learns
each record's gap distribution and goes below that bound.
"""

import array
import math
from typing import Iterable, Iterator, Tuple

import numpy as np

from tflite_edge import adaptive
from tflite_edge.errors import PatchError

RICE, BITMAP, ALL, ADAPTIVE, COLUMNS = 0, 1, 2, 3, 4
CODING_NAMES = {RICE: "rice", BITMAP: "bitmap", ALL: "all", ADAPTIVE: "adaptive",
                COLUMNS: "columns"}
MAX_RICE_PARAMETER = 31
_UINT32 = next(code for code in "IL" if array.array(code).itemsize == 4)
RICE_PIECE = 1 << 14   # stream bytes unpacked at a time when decoding


def rice_size(values: np.ndarray, parameter: int) -> int:
    """Bits of the Rice code of non-negative integers `values` with parameter k."""
    values = np.asarray(values, np.uint64)
    return int(np.sum(values >> np.uint64(parameter))) + len(values) * (1 + parameter)


def best_rice(values: np.ndarray) -> Tuple[int, int]:
    """(k, bits) of the cheapest Rice code for these non-negative integers."""
    return best_rice_blocks([values])


def best_rice_blocks(blocks: Iterable[np.ndarray]) -> Tuple[int, int]:
    """`best_rice` of the concatenation of `blocks`, holding one block at a time."""
    sizes = np.zeros(MAX_RICE_PARAMETER + 1, np.int64)
    for block in blocks:
        sizes += [rice_size(block, k) for k in range(MAX_RICE_PARAMETER + 1)]
    best = int(np.argmin(sizes))  # the first of equal sizes, as min() picks
    return best, int(sizes[best])


def rice_encode(values: np.ndarray, parameter: int) -> bytes:
    """Each value v: (v >> k) ones, a zero, then the k low bits of v (LSB first)."""
    return rice_encode_blocks([values], parameter)


def rice_encode_blocks(blocks: Iterable[np.ndarray], parameter: int) -> bytes:
    """`rice_encode` of the concatenation of `blocks`, holding one block's bits at a time.

    Codes are not byte-aligned: the bits past the last whole byte of a block
    carry over to the next one.
    """
    out, carry = [], np.zeros(0, np.uint8)
    for block in blocks:
        bits = np.concatenate([carry, _rice_bits(block, parameter)])
        whole = len(bits) - len(bits) % 8
        out.append(np.packbits(bits[:whole], bitorder="little").tobytes())
        carry = bits[whole:]
    out.append(np.packbits(carry, bitorder="little").tobytes())
    return b"".join(out)


def _rice_bits(values: np.ndarray, parameter: int) -> np.ndarray:
    values = np.asarray(values, np.uint64)
    quotients = (values >> np.uint64(parameter)).astype(np.int64)
    lengths = quotients + 1 + parameter
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), np.uint8)
    run_starts = np.cumsum(quotients) - quotients
    within = np.arange(int(quotients.sum())) - np.repeat(run_starts, quotients)
    bits[np.repeat(starts, quotients) + within] = 1
    for j in range(parameter):
        bits[starts + quotients + 1 + j] = (values >> np.uint64(j)) & np.uint64(1)
    return bits


def rice_decode(data: bytes, count: int, parameter: int, limit: int) -> np.ndarray:
    """Decodes `count` values, each below `limit`; the stream must end in < 8 zero bits.

    Raises:
      PatchError: a short stream, stray bits, or a value >= limit.
    """
    if parameter > MAX_RICE_PARAMETER:
        raise PatchError(f"Rice parameter {parameter} is out of range")
    if count * (1 + parameter) > 8 * len(data):  # every code takes k + 1 bits or more
        raise PatchError(f"a Rice stream of {len(data)} bytes cannot hold {count} codes")
    # The stream is unpacked a piece at a time into one byte per bit and
    # searched with bytes.find: C speed, and memory of a piece rather than
    # of the whole stream (or of a Python object per bit). The k-bit suffix
    # of every code is looked up in `low`, the value of the k bits starting
    # at each position, computed per piece with numpy.
    values = np.empty(count, np.uint32 if limit <= 1 << 32 else np.uint64)
    largest_quotient = (limit - 1) >> parameter
    stream, low, at, fed = b"", None, 0, 0
    ones = 0   # ones of the current code already consumed from earlier pieces
    for i in range(count):
        while True:
            end = stream.find(0, at)
            if 0 <= end and end + 1 + parameter <= len(stream):
                break
            # Only the unfinished code's tail (its zero and k bits, at most
            # 32 bits) is carried into the next piece; a long run of ones is
            # counted, not kept, so decoding stays linear in the stream.
            stop = len(stream) if end < 0 else end
            ones += stop - at
            at = stop
            if ones > largest_quotient:
                raise PatchError("a Rice-coded value is out of range")
            if fed == len(data):
                raise PatchError("a Rice code runs past the end of its stream")
            piece = np.frombuffer(data, np.uint8, min(RICE_PIECE, len(data) - fed), fed)
            stream = stream[at:] + np.unpackbits(piece, bitorder="little").tobytes()
            fed, at = fed + len(piece), 0
            low = _windows(stream, parameter) if parameter else None
        quotient = ones + end - at
        value = (quotient << parameter) | low[end + 1] if parameter else quotient
        if value >= limit:
            raise PatchError(f"a Rice-coded value ({value}) is out of range")
        values[i] = value
        ones = 0
        at = end + 1 + parameter
    leftover = stream[at:] + np.unpackbits(np.frombuffer(data, np.uint8, len(data) - fed, fed),
                                           bitorder="little").tobytes()
    if len(leftover) >= 8 or 1 in leftover:
        raise PatchError("a Rice stream has stray bits after its last code")
    return values


def _windows(stream: bytes, parameter: int) -> array.array:
    """For every bit position, the integer of the `parameter` bits from there (LSB first)."""
    bits = np.frombuffer(stream, np.uint8)
    windows = np.zeros(len(bits) + 1, np.uint32)  # one spare: a code may end the stream
    for j in range(parameter):
        windows[:len(bits) - j] |= bits[j:].astype(np.uint32) << np.uint32(j)
    return array.array(_UINT32, windows.tobytes())


# Changes are coded in blocks, so encoding a patch for a large model holds a
# block's temporaries rather than a few copies of every changed position.
BLOCK = 1 << 14


def gap_blocks(positions: np.ndarray) -> Iterator[np.ndarray]:
    """The gaps (zeros skipped before each position) of sorted positions, blockwise."""
    for first in range(0, len(positions), BLOCK):
        previous = positions[first - 1] if first else -1
        yield np.diff(positions[first:first + BLOCK], prepend=previous).astype(np.int64) - 1


def choose(positions: np.ndarray, count: int) -> Tuple[int, int, int]:
    """Picks the cheapest coding for sorted `positions` among `count` elements.

    Returns:
      (coding, rice_parameter, size_in_bytes).
    """
    if len(positions) == count:
        return ALL, 0, 0
    parameter, bits = best_rice_blocks(gap_blocks(positions))
    if (bits + 7) // 8 < (count + 7) // 8:
        return RICE, parameter, (bits + 7) // 8
    return BITMAP, 0, (count + 7) // 8


def encode(positions: np.ndarray, count: int, coding: int, parameter: int) -> bytes:
    if coding == ALL:
        return b""
    if coding == ADAPTIVE:
        return adaptive.encode_positions(positions)
    if coding == BITMAP:
        bits = np.zeros(count, np.uint8)
        bits[positions] = 1
        return np.packbits(bits, bitorder="little").tobytes()
    return rice_encode_blocks(gap_blocks(positions), parameter)


def decode(data: bytes, count: int, changed: int, coding: int, parameter: int) -> np.ndarray:
    """Decodes `changed` strictly increasing positions below `count`.

    Raises:
      PatchError: the stream is short, has stray bits, or positions fall
        outside the buffer or are not increasing.
    """
    if coding == ALL:
        if changed != count or data:
            raise PatchError(f"record codes all {count} elements but claims {changed} "
                             f"with {len(data)} position bytes")
        return np.arange(count, dtype=np.int64)
    if coding == BITMAP:
        if len(data) != (count + 7) // 8:
            raise PatchError("bitmap has the wrong length or bits past the buffer's end")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        if bits[count:].any():
            raise PatchError("bitmap has the wrong length or bits past the buffer's end")
        positions = np.flatnonzero(bits[:count])
        if len(positions) != changed:
            raise PatchError(f"bitmap marks {len(positions)} elements, record claims {changed}")
        return positions.astype(np.int64)
    if coding == ADAPTIVE:
        return adaptive.decode_positions(data, count, changed)
    if coding != RICE:
        raise PatchError(f"unknown position coding {coding}")
    positions = rice_decode(data, changed, parameter, count).astype(np.int64)
    # In place: a patch for a large model decodes millions of positions.
    positions += 1
    np.cumsum(positions, out=positions)
    positions -= 1
    if changed and positions[-1] >= count:
        raise PatchError(f"position {positions[-1]} is outside a buffer of {count} elements")
    return positions


def entropy_bound_bits(count: int, changed: int) -> float:
    """log2(C(count, changed)): the fewest bits any code can spend on the positions."""
    return (math.lgamma(count + 1) - math.lgamma(changed + 1)
            - math.lgamma(count - changed + 1)) / math.log(2)
