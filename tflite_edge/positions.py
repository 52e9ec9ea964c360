"""Position codes: Golomb-Rice on gaps, or a bitmap, whichever is smaller.

Both are bit streams packed least-significant bit first. Positions of n
changes among N elements cost at least log2(C(N, n)) bits; Rice-coded gaps
come within a few percent of it at 0.1-10 % density, a bitmap wins above ~30 %.
"""

import math
from typing import Tuple

import numpy as np

from tflite_edge.errors import PatchError

RICE, BITMAP, ALL = 0, 1, 2
CODING_NAMES = {RICE: "rice", BITMAP: "bitmap", ALL: "all"}
MAX_RICE_PARAMETER = 31


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=-1).astype(np.int64) - 1


def rice_bits(positions: np.ndarray, parameter: int) -> int:
    """Exact size in bits of the Rice code of these positions."""
    gaps = _gaps(positions)
    return int(np.sum(gaps >> parameter)) + len(gaps) * (1 + parameter)


def best_rice_parameter(positions: np.ndarray) -> Tuple[int, int]:
    """The parameter with the fewest bits, and that size."""
    best = min(range(MAX_RICE_PARAMETER + 1), key=lambda k: rice_bits(positions, k))
    return best, rice_bits(positions, best)


def choose(positions: np.ndarray, count: int) -> Tuple[int, int, int]:
    """Picks the cheapest coding for sorted `positions` among `count` elements.

    Returns:
      (coding, rice_parameter, size_in_bytes).
    """
    if len(positions) == count:
        return ALL, 0, 0
    parameter, bits = best_rice_parameter(positions)
    if (bits + 7) // 8 < (count + 7) // 8:
        return RICE, parameter, (bits + 7) // 8
    return BITMAP, 0, (count + 7) // 8


def encode(positions: np.ndarray, count: int, coding: int, parameter: int) -> bytes:
    if coding == ALL:
        return b""
    if coding == BITMAP:
        bits = np.zeros(count, np.uint8)
        bits[positions] = 1
        return np.packbits(bits, bitorder="little").tobytes()
    gaps = _gaps(positions)
    quotients = gaps >> parameter
    lengths = quotients + 1 + parameter
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), np.uint8)
    # Unary quotient: q ones, then the zero that is already there.
    run_starts = np.cumsum(quotients) - quotients
    within = np.arange(int(quotients.sum())) - np.repeat(run_starts, quotients)
    bits[np.repeat(starts, quotients) + within] = 1
    for j in range(parameter):  # remainder, least significant bit first
        bits[starts + quotients + 1 + j] = (gaps >> j) & 1
    return np.packbits(bits, bitorder="little").tobytes()


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
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    if coding == BITMAP:
        if len(data) != (count + 7) // 8 or bits[count:].any():
            raise PatchError("bitmap has the wrong length or bits past the buffer's end")
        positions = np.flatnonzero(bits[:count])
        if len(positions) != changed:
            raise PatchError(f"bitmap marks {len(positions)} elements, record claims {changed}")
        return positions.astype(np.int64)
    if coding != RICE or parameter > MAX_RICE_PARAMETER:
        raise PatchError(f"unknown position coding {coding} (parameter {parameter})")
    stream = bits.tolist()
    positions = np.empty(changed, np.int64)
    at, previous = 0, -1
    for i in range(changed):
        try:
            end = stream.index(0, at)
        except ValueError:
            raise PatchError("position stream ends inside a Rice code") from None
        if end + 1 + parameter > len(stream):
            raise PatchError("position stream ends inside a Rice code")
        gap = (end - at) << parameter
        for j in range(parameter):
            gap |= stream[end + 1 + j] << j
        previous += gap + 1
        if previous >= count:
            raise PatchError(f"position {previous} is outside a buffer of {count} elements")
        positions[i] = previous
        at = end + 1 + parameter
    if (len(stream) - at) >= 8 or any(stream[at:]):
        raise PatchError("position stream has stray bits after its last code")
    return positions


def entropy_bound_bits(count: int, changed: int) -> float:
    """log2(C(count, changed)): the fewest bits any code can spend on the positions."""
    return (math.lgamma(count + 1) - math.lgamma(changed + 1)
            - math.lgamma(count - changed + 1)) / math.log(2)
