import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tflite_edge import positions
from tflite_edge.errors import PatchError


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))))
def test_any_position_set_round_trips(case):
    count, chosen = case
    pos = np.array(sorted(chosen), np.int64)
    coding, parameter, size = positions.choose(pos, count)
    data = positions.encode(pos, count, coding, parameter)
    assert len(data) == size
    assert np.array_equal(positions.decode(data, count, len(pos), coding, parameter), pos)


@pytest.mark.parametrize("density, limit", [(0.001, 1.05), (0.01, 1.05), (0.05, 1.05),
                                            (0.1, 1.05)])
def test_rice_is_near_the_information_bound(density, limit):
    count = 235200
    rng = np.random.RandomState(0)
    pos = np.sort(rng.choice(count, int(count * density), replace=False))
    coding, _, size = positions.choose(pos, count)
    assert coding == positions.RICE
    assert 8 * size / positions.entropy_bound_bits(count, len(pos)) < limit


def test_bitmap_wins_when_dense_and_all_when_full():
    pos = np.arange(0, 1000, 2)
    assert positions.choose(pos, 1000)[0] == positions.BITMAP
    assert positions.choose(np.arange(10), 10) == (positions.ALL, 0, 0)


def test_decoder_refuses_bad_streams():
    pos = np.array([3, 17, 900])
    data = positions.encode(pos, 1000, positions.RICE, 6)
    with pytest.raises(PatchError, match="runs past the end|cannot hold"):
        positions.decode(data[:1], 1000, 3, positions.RICE, 6)
    with pytest.raises(PatchError, match="out of range|outside a buffer"):
        positions.decode(data, 800, 3, positions.RICE, 6)
    with pytest.raises(PatchError, match="stray bits"):
        positions.decode(data + b"\x01", 1000, 3, positions.RICE, 6)
    with pytest.raises(PatchError, match="marks 2 elements"):
        positions.decode(bytes([0b101]), 8, 3, positions.BITMAP, 0)
    with pytest.raises(PatchError, match="claims"):
        positions.decode(b"", 8, 7, positions.ALL, 0)


def test_blockwise_rice_coding_equals_one_block():
    rng = np.random.RandomState(7)
    values = rng.geometric(0.05, 5000).astype(np.uint64)
    for parameter in (0, 1, 3, 7):
        whole = positions.rice_encode(values, parameter)
        cuts = np.sort(rng.choice(np.arange(1, len(values)), 9, replace=False))
        blocks = np.split(values, cuts)
        assert positions.rice_encode_blocks(blocks, parameter) == whole
        assert positions.best_rice_blocks(blocks) == positions.best_rice(values)


@pytest.mark.parametrize("piece", [1, 3, 1 << 14])
def test_rice_decoding_a_piece_at_a_time(monkeypatch, piece):
    monkeypatch.setattr(positions, "RICE_PIECE", piece)
    rng = np.random.RandomState(piece)
    values = rng.geometric(0.02, 3000).astype(np.uint64)
    for parameter in (0, 2, 5):
        coded = positions.rice_encode(values, parameter)
        assert np.array_equal(positions.rice_decode(coded, len(values), parameter, 1 << 20),
                              values)
        with pytest.raises(PatchError, match="stray bits"):
            positions.rice_decode(coded + b"\x01", len(values), parameter, 1 << 20)
        with pytest.raises(PatchError):
            positions.rice_decode(coded[:-1], len(values), parameter, 1 << 20)
