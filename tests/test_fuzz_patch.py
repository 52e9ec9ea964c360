"""Property-based fuzzing of the patch parser and the Python applier.

Whatever the bytes, applying either raises PatchError or returns exactly the
target model; nothing else (no IndexError, ValueError, MemoryError, hang).
Mutated bodies are re-sealed with a correct checksum, so the record parser
and the position and value decoders see them, not just the checksum test.
"""

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from benchmarks import fuzz
from tflite_edge import patch_format
from tflite_edge.apply import apply_patch
from tflite_edge.create import create_patch
from tflite_edge.errors import PatchError

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def case(exported_run):
    result, _ = exported_run
    base = open(os.path.join(result.out_dir, "round_000", "model.tflite"), "rb").read()
    target = open(os.path.join(result.out_dir, "round_001", "model.tflite"), "rb").read()
    return base, target, create_patch(base, target, 1)


H = patch_format.HEADER.size


def reseal(header: bytes, body: bytes) -> bytes:
    """A patch around `body` whose lengths, body hash and checksum are all correct (unsigned)."""
    header = bytearray(header)
    struct.pack_into("<I", header, 96, len(body))
    struct.pack_into("<H", header, 6, 0)  # unsigned, so no key id either
    header[116:124] = bytes(8)
    header[124:156] = hashlib.sha256(body).digest()
    content = bytes(header) + body
    return content + hashlib.sha256(content).digest()


def _outcome(base, target, patch):
    try:
        result = apply_patch(base, patch, allow_unsigned=True)
    except PatchError:
        return "refused"
    assert result == target
    return "applied"


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_are_refused(case, data):
    base, target, _ = case
    assert _outcome(base, target, data) == "refused"


@FUZZ
@given(st.data())
def test_mutated_patches_are_refused(case, data):
    base, target, patch = case
    mutated = bytearray(patch)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    if bytes(mutated) != patch:
        assert _outcome(base, target, bytes(mutated)) == "refused"


@FUZZ
@given(st.data())
def test_resealed_mutated_bodies_never_yield_a_wrong_model(case, data):
    base, target, patch = case
    header, body = patch[:H], bytearray(patch[H:-32])
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "count"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "truncate":
        del body[data.draw(st.integers(0, len(body) - 1)):]
    elif action == "insert":
        at = data.draw(st.integers(0, len(body)))
        body[at:at] = data.draw(st.binary(min_size=1, max_size=40))
    else:
        header = bytearray(header)
        struct.pack_into("<I", header, 92, data.draw(st.integers(0, 2 ** 32 - 1)))
        header = bytes(header)
    outcome = _outcome(base, target, reseal(header, bytes(body)))
    assert outcome in ("refused", "applied")


def test_resealing_the_unchanged_body_still_applies(case):
    base, target, patch = case
    assert _outcome(base, target, reseal(patch[:H], patch[H:-32])) == "applied"


def test_decoder_survives_huge_claims(case):
    base, target, _ = case
    # Format 3: a record claiming 2**32-1 changed elements of a 2**32-1 element buffer.
    patch = create_patch(base, target, 1, version=3)
    header = bytearray(patch[:H])
    body = bytearray(patch[H:-32])
    struct.pack_into("<I", body, 20, 2 ** 32 - 1)
    struct.pack_into("<I", body, 24, 2 ** 32 - 1)
    with pytest.raises(PatchError):
        patch_format.decode(reseal(bytes(header), bytes(body)))
    # Format 4 names no count: 2**32-1 changes of a real buffer, read against it.
    patch = create_patch(base, target, 1)
    header = bytearray(patch[:H])
    body = bytearray(patch[H:-32])
    numbers, after = fuzz.compact_numbers(body, 0)
    numbers[1] = 2 ** 32 - 1
    body[patch_format.COMPACT_RECORD.size:after] = b"".join(
        patch_format.write_varint(n) for n in numbers)
    with pytest.raises(PatchError, match="record changes 4294967295 of"):
        patch_format.decode(reseal(bytes(header), bytes(body)), base)
