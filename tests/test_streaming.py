"""Patches created and applied a chunk at a time give the same bytes as in memory.

The models in the tests are smaller than one default chunk, so the chunk size
is shrunk here to make records, raw ranges and buffers straddle many chunks.
"""

import hashlib
import os

import numpy as np
import pytest

from conftest import round_folders
from tflite_edge import source
from tflite_edge.apply import apply_patch, apply_patch_file
from tflite_edge.create import create_patch, create_patch_files, create_whole_file_patch
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ModelFile
from tflite_edge.source import Source


@pytest.fixture(params=[8, 64, 4096])
def small_chunks(request, monkeypatch):
    monkeypatch.setattr(source, "CHUNK", request.param)
    return request.param


@pytest.fixture(scope="module")
def rounds(exported_run):
    return [os.path.join(folder, "model.tflite") for folder in round_folders(exported_run[0])]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_streamed_patches_equal_in_memory_ones_for_every_round_pair(rounds, small_chunks,
                                                                    tmp_path):
    in_memory = {}
    for i, base in enumerate(rounds):
        for j in range(i + 1, len(rounds)):
            streamed = create_patch_files(base, rounds[j], j)
            in_memory[i, j] = streamed
            assert streamed == create_patch(_read(base), _read(rounds[j]), j)
            out = tmp_path / f"{i}_{j}.tflite"
            patch_path = tmp_path / f"{i}_{j}.patch"
            patch_path.write_bytes(streamed)
            header = apply_patch_file(base, str(patch_path), str(out),
                                      allow_unsigned=True).header
            assert out.read_bytes() == _read(rounds[j]) and header.round == j
    # A catch-up patch is no bigger than the chain it replaces (elements that
    # moved back and forth are sent once or not at all).
    last = len(rounds) - 1
    chain = sum(len(in_memory[r, r + 1]) for r in range(last))
    assert len(in_memory[0, last]) <= chain


def test_whole_file_updates_across_chunk_boundaries(rounds, small_chunks, tmp_path):
    base = _read(rounds[0])
    target = bytearray(_read(rounds[-1]))
    for tensor in ModelFile(base).tensors:
        if tensor.scale_offset and len(tensor.scales) > 1:
            end = tensor.scale_offset + 4 * len(tensor.scales)
            target[tensor.scale_offset:end] = np.full(len(tensor.scales), 0.25,
                                                      np.float32).tobytes()
    target = bytes(target) + b"a longer file"
    with Source.open(rounds[0]) as b:
        patch = create_whole_file_patch(b, Source.of(target), 3)
    assert apply_patch(base, patch, whole_file="always", allow_unsigned=True) == target
    (tmp_path / "p").write_bytes(patch)
    apply_patch_file(rounds[0], str(tmp_path / "p"), str(tmp_path / "out"), whole_file="always",
                     allow_unsigned=True)
    assert (tmp_path / "out").read_bytes() == target


def test_a_result_that_does_not_hash_leaves_the_output_untouched(rounds, small_chunks,
                                                                 tmp_path):
    base, target = _read(rounds[0]), _read(rounds[1])
    out = tmp_path / "device.tflite"
    out.write_bytes(base)
    patch = bytearray(create_patch(base, target, 1))
    # Forge the expected result hash (and re-seal the checksum): every chunk
    # is written before the mismatch shows, and none of it may land.
    at = 60   # the result hash
    patch[at] ^= 1
    patch[-32:] = hashlib.sha256(bytes(patch[:-32])).digest()
    (tmp_path / "p").write_bytes(bytes(patch))
    with pytest.raises(PatchError, match="result hash"):
        apply_patch_file(str(out), str(tmp_path / "p"), allow_unsigned=True)
    assert out.read_bytes() == base
    assert sorted(os.listdir(tmp_path)) == ["device.tflite", "device.tflite.lock", "p"]


def test_patches_do_not_depend_on_the_coding_block(rounds, monkeypatch):
    from tflite_edge import positions  # pylint: disable=import-outside-toplevel
    expected = create_patch_files(rounds[0], rounds[-1], 9)
    monkeypatch.setattr(positions, "BLOCK", 7)
    assert create_patch_files(rounds[0], rounds[-1], 9) == expected
