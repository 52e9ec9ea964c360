"""Patch format 5: the column code of positions and the saturating code of int8 values.

The three appliers are held to each other on format 5 by the shared hostile
cases (tests/hostile.py), the fuzz seeds that force both codes on every
record (tflite_edge/c/fuzz/make_seeds.py: test_c_fuzz.py, the power-cut
tests of test_c_applier.py, test_android.py) and the run chains; here: the
codes' own rules, their choice on real rounds, and their sizes.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import patches_in_formats
from tflite_edge import adaptive, patch_format, positions
from tflite_edge.errors import PatchError


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_column_codes_round_trip_under_any_row(data):
    count = data.draw(st.integers(1, 2500))
    row = data.draw(st.integers(1, min(count, adaptive.MAX_COLUMNS)))
    # Some draws pick whole columns, so the column contexts see real structure.
    if data.draw(st.booleans()):
        columns = data.draw(st.sets(st.integers(0, row - 1), min_size=1, max_size=5))
        chosen = sorted(p for p in range(count) if p % row in columns)
    else:
        chosen = sorted(data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=300)))
    stream = adaptive.encode_columns(chosen, row)
    assert adaptive.decode_columns(stream, count, len(chosen), row).tolist() == chosen


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-128, 127), st.integers(-128, 127)).filter(
    lambda pair: pair[0] != pair[1]), min_size=1, max_size=300))
def test_saturating_values_rebuild_every_int8_change(pairs):
    old = np.array([a for a, _ in pairs], np.int8)
    new = np.array([b for _, b in pairs], np.int8)
    zigzag, ends = adaptive.decode_saturating(adaptive.encode_saturating(old, new), len(pairs))
    rebuilt = np.where(ends != 0, ends, patch_format.add_deltas(old, zigzag))
    assert rebuilt.tolist() == new.tolist()
    # The end bit is what the code is for: a change to +-127 codes no magnitude.
    assert ((ends != 0) == ((new == 127) & (new > old) | (new == -127) & (new < old))).all()


def test_changes_to_the_ends_of_the_range_cost_a_fraction_of_a_delta():
    rng = np.random.RandomState(0)
    old = rng.randint(-100, 100, 2000).astype(np.int8)
    new = np.where(rng.rand(2000) < 0.5, 127, -127).astype(np.int8)
    zigzag = patch_format.zigzag_deltas(old, new)
    assert len(adaptive.encode_saturating(old, new)) < 0.25 * len(adaptive.encode_values(zigzag))


def test_decoding_saturating_values_needs_no_old_value():
    # An in-place applier resuming after a power cut decodes past chunks it
    # has already rewritten: the stream alone must decide every code.
    stream = adaptive.encode_saturating([10, -5, 0], [127, -127, 3])
    zigzag, ends = adaptive.decode_saturating(stream, 3)
    assert ends.tolist() == [127, -127, 0] and zigzag.tolist() == [0, 0, 6]


def test_a_column_code_refuses_rows_it_cannot_keep_and_scans_past_its_buffer():
    stream = adaptive.encode_columns([3], 4)
    for row in (0, 9, adaptive.MAX_COLUMNS + 1):
        with pytest.raises(PatchError, match="row of"):
            adaptive.decode_columns(stream, 8, 1, row)
    with pytest.raises(PatchError, match="before the buffer ends|ends before its last code"):
        adaptive.decode_columns(stream, 3, 1, 3)
    with pytest.raises(ValueError):
        adaptive.encode_columns([3], adaptive.MAX_COLUMNS + 1)


def test_format_5_is_never_larger_than_4_and_rebuilds_the_same_file(exported_files):
    sizes = {4: 0, 5: 0}
    for patches, records in patches_in_formats(exported_files, (4, 5)):
        for version, patch in patches.items():
            sizes[version] += len(patch)
        # Record by record: the writer keeps format 4's code where a new one
        # does not win (a column code pays for its row length).
        for a, b in zip(records[4], records[5]):
            assert b.value_bytes <= a.value_bytes
            assert b.position_bytes + (len(patch_format.write_varint(b.row)) if b.row else 0) \
                <= a.position_bytes
    assert sizes[5] <= sizes[4], sizes


def test_a_fine_tuned_layer_takes_both_new_codes():
    """A dense kernel whose few changes sit in a few input features (columns)
    and half of which go to the ends of the int8 range, as DPU's do."""
    from tflite_edge.patch_format import Record  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(1)
    rows, columns = 100, 300
    old = rng.randint(-60, 60, rows * columns).astype(np.int8)
    features = rng.choice(columns, 12, replace=False)
    chosen = np.sort(np.concatenate([r * columns + rng.choice(features, 4, replace=False)
                                     for r in range(rows)]))
    new = old.copy()
    moved = rng.randint(5, 40, len(chosen)) * rng.choice([-1, 1], len(chosen))
    new[chosen] = np.clip(old[chosen] + moved, -127, 127)
    new[chosen[::2]] = np.where(old[chosen[::2]] < 0, -127, 127)
    record = Record(patch_format.KIND_ELEMENTS, 0, 1, 9, rows * columns, chosen, new[chosen],
                    old_values=old[chosen], rows=(columns,))
    four = len(patch_format.encode_record(Record(**{**record.__dict__}), version=4))
    five = len(patch_format.encode_record(record, version=5))
    assert record.coding == positions.COLUMNS and record.row == columns
    assert record.value_coding == patch_format.VALUES_SATURATING
    assert five < 0.8 * four, (five, four)
