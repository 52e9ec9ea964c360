"""A short fuzzing run of the C applier under AddressSanitizer and UBSan.

`make -C tflite_edge/c fuzz` runs the same target under libFuzzer (clang);
this suite uses the standalone mutation driver, which any sanitizer-capable
compiler builds.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import C_DIR, ROOT, build_c

sys.path.insert(0, os.path.join(C_DIR, "fuzz"))
import make_seeds  # noqa: E402  pylint: disable=wrong-import-position

from tflite_edge import patch_format  # noqa: E402
from tflite_edge.apply import apply_patch  # noqa: E402


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return build_c("dpu_fuzz_standalone", tmp_path_factory.mktemp("fuzz"))


def test_seeds_are_valid_patches_for_the_fuzz_base():
    base = make_seeds.fuzz_base()
    codings = set()
    for patch in make_seeds.seed_patches():
        # raises unless the result hashes to the target
        apply_patch(base, patch, whole_file="always", allow_unsigned=True)
        version = patch_format.decode(patch).header.version
        codings |= {(version, r.kind, r.coding, r.value_coding, r.element_type)
                    for r in patch_format.decode(patch, base).records}
    for version in patch_format.VERSIONS:
        elements = [c for c in codings if c[:2] == (version, patch_format.KIND_ELEMENTS)]
        # Rice, bitmap, "all" positions, version 4's adaptive ones, version 5's columns
        assert {c[2] for c in elements} == {0, 1, 2} | {3: set(), 4: {3}, 5: {4}}[version]
        # raw and delta values, version 4's adaptive ones, version 5's saturating ones
        assert {c[3] for c in elements} == {0, 1} | {3: set(), 4: {2}, 5: {2, 3}}[version]
        assert {c[4] for c in elements} == {2, 9}      # int32 biases and int8 weights
        assert (version, patch_format.KIND_WHOLE_FILE) in {c[:2] for c in codings}


def test_fuzzing_finds_no_crash_or_undefined_behaviour(fuzzer, tmp_path):
    seeds = make_seeds.write(str(tmp_path / "corpus"))
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=1:detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    proc = subprocess.run([fuzzer, "40000", "20261124", *seeds], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "40000 inputs, 0 crashes" in proc.stdout
    assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr


def test_c_applier_agrees_with_the_python_one_on_mutated_patches(tmp_path):
    """The structure-aware differential run (benchmarks.fuzz), a short one.

    Each mutated patch is sealed again (lengths, signature, checksum, and for
    bodies Python decodes, the result hash), so most get past the envelope;
    the C applier, under the sanitizers, must reach Python's verdict on every
    one: the same accepted files, the same bodies written, the same refusals.
    """
    from benchmarks import fuzz
    judged = fuzz.generate(str(tmp_path), 6000, seed=20261125, batch_size=1200)   # every setting
    verdicts = judged["verdicts"]
    # the mutations reach every outcome, not just the checksum
    assert verdicts["accepted"] > 300 and verdicts["refused at the result hash"] > 15
    batch = build_c("dpu_batch", tmp_path)
    line, _ = fuzz.run_batches([batch], judged["files"])
    assert line.startswith("6000 inputs") and "no disagreement" in line
    # Storage that changed between the C applier's reads (inputs refused
    # before the change came are counted as ordinary ones): every such input
    # refused or applied as verified (batch.c aborts on anything else).
    changed = re.search(r"changing storage: (\d+) accepted as verified, (\d+) refused", line)
    assert 300 < sum(map(int, changed.groups())) <= judged["changing_storage"]
