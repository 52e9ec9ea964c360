"""The C applier against the Python one: same results, same refusals."""

import os
import re
import sys
import subprocess

import numpy as np
import pytest

from conftest import C_DIR, build_c, stack_depths

from tflite_edge import patch_format, positions
from tflite_edge.create import create_patch
from tflite_edge.model_file import ModelFile


def _apply(binary, base, patch, tmp_path, name="out", trust=("--allow_unsigned",)):
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "patch").write_bytes(patch)
    out = tmp_path / name
    proc = subprocess.run([binary, *trust, str(tmp_path / "base"), str(tmp_path / "patch"),
                           str(out)], capture_output=True, text=True)
    return proc, (out.read_bytes() if out.exists() else None)


def _header_says(pattern):
    with open(os.path.join(C_DIR, "dpu_patch.h")) as f:
        return [int(n) for n in re.search(pattern, f.read().replace("\n *", "")).groups()]


def test_builds_with_strict_flags_and_states_its_ram(c_applier):
    size = int(subprocess.run([c_applier, "--sizeof"], capture_output=True, text=True).stdout)
    stated, = _header_says(r"sizeof\(dpu_applier\) bytes, (\d+) on x86-64")
    assert size == stated   # chunk, journal entry, two bit readers, SHA-256


def test_the_stack_the_header_states_is_the_deepest_call_chain(tmp_path):
    """gcc's call graph with per-function stack use: the longest chain from each entry."""
    subprocess.run(["gcc", "-std=c99", "-O2", "-fcallgraph-info=su", "-c",
                    os.path.join(C_DIR, "dpu_patch.c"), "-o", str(tmp_path / "dpu_patch.o")],
                   check=True, cwd=tmp_path)
    deepest = stack_depths((tmp_path / "dpu_patch.ci").read_text())
    limit, measured, key_limit = _header_says(
        r"at most (\d+) bytes on the deepest.*gcc -O2: (\d+),.*and (\d+) for dpu_check")
    chain = max(deepest(entry) for entry in ("dpu_apply", "dpu_apply_in_place",
                                             "dpu_apply_in_sectors"))
    assert chain <= limit and abs(chain - measured) <= 0.1 * measured
    assert deepest("dpu_check_public_key") <= key_limit


def test_the_environment_cannot_drop_the_strict_flags():
    proc = subprocess.run(["make", "-n", "-B", "-C", C_DIR, "OUT=/nonexistent",
                           "CFLAGS=-O0 -w -Wno-error -Wno-pedantic"],
                          capture_output=True, text=True)
    command = next(line for line in proc.stdout.splitlines() if "dpu_apply_main.c" in line)
    flags = command.split()
    assert "-w" not in flags and "-Wno-error" not in flags and "-O0" in flags
    for strict in ("-Werror", "-pedantic", "-Wall", "-Wextra", "-std=c99"):
        assert strict in flags and flags.index(strict) > flags.index("-O0"), strict


def test_same_bytes_as_the_python_applier_for_every_round(c_applier, exported_files, tmp_path):
    # Random new values (where raw coding wins) beside the run's real rounds
    # (where deltas win), so both value codes go through both appliers.
    model = ModelFile(exported_files[0])
    weights = max(model.buffers, key=lambda b: b.length)
    noisy = bytearray(exported_files[0])
    rng = np.random.RandomState(0)
    where = weights.offset + rng.choice(weights.length, weights.length // 50, replace=False)
    noisy[where[0]:where[0] + 1] = bytes([noisy[where[0]] ^ 0xff])
    for at in where[1:]:
        noisy[at] = rng.randint(256)
    pairs = [(exported_files[r - 1], exported_files[r]) for r in range(1, len(exported_files))]
    pairs.append((exported_files[0], bytes(noisy)))
    codings = {3: set(), 4: set()}
    for r, (base, target) in enumerate(pairs, start=1):
        for version in (3, 4):
            patch = create_patch(base, target, r, version=version)
            codings[version] |= {(rec.coding, rec.value_coding)
                                 for rec in patch_format.decode(patch, base).records}
            proc, out = _apply(c_applier, base, patch, tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert out == target
    assert {v for _, v in codings[3]} == {patch_format.VALUES_RAW, patch_format.VALUES_DELTA}
    # Real rounds take the adaptive codes where they are smaller.
    assert positions.ADAPTIVE in {p for p, _ in codings[4]}
    assert patch_format.VALUES_ADAPTIVE in {v for _, v in codings[4]}


def test_c_refuses_what_python_refuses(c_applier, exported_files, tmp_path):
    base, target = exported_files[0], exported_files[1]
    patch = create_patch(base, target, 1)
    checked = 0
    for at in range(0, len(patch), max(1, len(patch) // 300)):
        broken = bytearray(patch)
        broken[at] ^= 0x10
        proc, out = _apply(c_applier, base, bytes(broken), tmp_path)
        assert proc.returncode == 2 and out is None, at
        assert proc.stderr.startswith("error: ")
        checked += 1
    for length in range(0, len(patch), max(1, len(patch) // 100)):
        proc, out = _apply(c_applier, base, patch[:length], tmp_path)
        assert proc.returncode == 2 and out is None, length
    assert checked >= 300
    proc, _ = _apply(c_applier, target, patch, tmp_path)
    assert "already applied" in proc.stderr
    other = bytearray(base)
    other[10] ^= 1
    proc, _ = _apply(c_applier, bytes(other), patch, tmp_path)
    assert "for another model" in proc.stderr
    assert (tmp_path / "base").read_bytes() == bytes(other)  # inputs are never written


def test_the_device_round_refuses_replays(c_applier, exported_files, tmp_path):
    patch = create_patch(exported_files[0], exported_files[1], 1)
    for round_, code in (("0", 0), ("1", 2), ("2", 2)):
        proc, _ = _apply(c_applier, exported_files[0], patch, tmp_path,
                         trust=("--allow_unsigned", "--round", round_))
        assert proc.returncode == code, (round_, proc.stderr)
        assert code == 0 or "not newer" in proc.stderr


def test_c_signature_callback_with_a_real_ed25519(c_signed_applier, c_applier, exported_files,
                                                  tmp_path):
    from tflite_edge import signing
    keys = {}
    for name in ("good", "other"):
        signing.generate_keypair(str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.pub"))
        keys[name] = signing.load_signer(str(tmp_path / f"{name}.pem"))
    base, target = exported_files[0], exported_files[1]
    forged = signing.load_signer(str(tmp_path / "other.pem"))
    forged.key_id = keys["good"].key_id      # another key's signature under this key's id
    cases = {
        "signed": (create_patch(base, target, 1, keys["good"]), 0, None),
        "wrong key": (create_patch(base, target, 1, keys["other"]), 2, "does not trust"),
        "forged under the key's id": (create_patch(base, target, 1, forged), 2,
                                      "signature is not valid"),
        "unsigned": (create_patch(base, target, 1), 2, "not signed"),
    }
    (tmp_path / "base").write_bytes(base)
    for label, (patch, code, message) in cases.items():
        (tmp_path / "patch").write_bytes(patch)
        proc = subprocess.run([c_signed_applier, "--public_key", str(tmp_path / "good.pub"),
                               str(tmp_path / "base"), str(tmp_path / "patch"),
                               str(tmp_path / "out")], capture_output=True, text=True)
        assert proc.returncode == code, (label, proc.stderr)
        if message:
            assert message in proc.stderr, label
        else:
            assert (tmp_path / "out").read_bytes() == target
    plain = subprocess.run([c_applier, "--public_key", str(tmp_path / "good.pub"),
                            str(tmp_path / "base"), str(tmp_path / "patch"), str(tmp_path / "o")],
                           capture_output=True, text=True)
    assert plain.returncode == 2 and "no signature support" in plain.stderr


@pytest.fixture(scope="module")
def powercut(tmp_path_factory):
    return build_c("dpu_powercut", tmp_path_factory.mktemp("powercut"))


def _powercut(binary, base, patch, target, folder, sector=None, figures=False):
    for name, data in (("base", base), ("patch", patch), ("target", target)):
        (folder / name).write_bytes(data)
    # (the harness keeps its inputs until exit: no leak report from sanitizer builds)
    proc = subprocess.run([binary, str(folder / "base"), str(folder / "patch"),
                           str(folder / "target"), *([str(sector)] if sector else [])],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    numbers = [int(w) for w in proc.stdout.split() if w.isdigit()]
    if figures:   # cuts, bad, untouched, programs not erased, model erases, changed sectors
        return numbers
    return numbers[0], numbers[1]


def _same_size_seed_cases():
    """(base, patch, target) for every fuzz seed patch whose result fits the model's
    storage (in place, the result must), whole files and every record coding."""
    sys.path.insert(0, os.path.join(C_DIR, "fuzz"))
    import make_seeds  # pylint: disable=import-outside-toplevel
    from tflite_edge.apply import apply_patch  # pylint: disable=import-outside-toplevel
    base = make_seeds.fuzz_base()
    cases = []
    for patch in make_seeds.seed_patches():
        target = apply_patch(base, patch, whole_file="always", allow_unsigned=True)
        if len(target) == len(base):
            cases.append((base, patch, target))
    # one longer whole file per format version does not fit
    assert len(cases) == len(make_seeds.seed_patches()) - len(patch_format.VERSIONS)
    return cases


def test_in_place_apply_survives_a_power_cut_after_every_write(powercut, exported_files,
                                                              tmp_path):
    patch = create_patch(exported_files[0], exported_files[1], 1)
    cuts, bad = _powercut(powercut, exported_files[0], patch, exported_files[1], tmp_path)
    assert bad == 0
    changed_chunks = len({(r.offset + p * np.dtype(patch_format.ELEMENT_DTYPES[
        r.element_type]).itemsize) // 64
        for r in patch_format.decode(patch, exported_files[0]).records for p in r.positions})
    assert cuts >= 2 * changed_chunks  # a journal and a model write per changed chunk


def test_in_place_power_cuts_with_whole_files_and_every_code(powercut, tmp_path):
    for n, (base, patch, target) in enumerate(_same_size_seed_cases()):
        cuts, bad = _powercut(powercut, base, patch, target, tmp_path)
        assert bad == 0 and cuts > 4, n


@pytest.mark.parametrize("sector", [256, 4096])
def test_nor_sector_mode_survives_a_cut_at_every_program_and_erase(powercut, exported_files,
                                                                   tmp_path, sector):
    """dpu_apply_in_sectors on simulated NOR flash (tests/powercut.c): every cut
    point resumes to the exact result, no byte is programmed that was not
    erased, and only the sectors whose bytes change are erased, once each."""
    patch = create_patch(exported_files[0], exported_files[1], 1)
    cuts, bad, _, unerased, erases, changed = _powercut(
        powercut, exported_files[0], patch, exported_files[1], tmp_path, sector, figures=True)
    print(f"{sector}-byte sectors: {cuts} cut points, {changed} sectors changed, "
          f"{erases} erased, {unerased} bytes programmed unerased, {bad} bad results")
    assert bad == 0 and unerased == 0
    assert 0 < changed < len(exported_files[0]) / sector and erases == changed
    # per changed sector: copy erase, copy programs, record, model erase, programs, record
    assert cuts >= changed * (4 + 2 * sector // 64)


def test_nor_sector_mode_with_whole_files_and_every_code(powercut, tmp_path):
    for n, (base, patch, target) in enumerate(_same_size_seed_cases()):
        cuts, bad, _, unerased, erases, changed = _powercut(powercut, base, patch, target,
                                                            tmp_path, 256, figures=True)
        assert bad == 0 and unerased == 0 and erases == changed and cuts > 4, n


def test_nor_sector_mode_refuses_the_hostile_patches_untouched(powercut, tmp_path):
    """The sector mode runs the same checks before its first erase: each crafted
    patch is refused with its own message, and the model is never erased."""
    import hostile  # pylint: disable=import-outside-toplevel
    base = hostile.tiny_model()
    tried = 0
    for case in hostile.cases():
        if case.signed or "whole model" in case.python:
            continue   # (the harness runs keyless, taking whole files)
        for name, data in (("base", base), ("patch", case.patch), ("target", base)):
            (tmp_path / name).write_bytes(data)
        proc = subprocess.run([powercut, str(tmp_path / "base"), str(tmp_path / "patch"),
                               str(tmp_path / "target"), "256"], capture_output=True, text=True)
        assert proc.returncode == 2 and case.c in proc.stderr, (case.name, proc.stderr)
        tried += 1
    assert tried >= 10


def test_nor_sector_mode_with_the_smallest_and_a_large_chunk_under_the_sanitizers(tmp_path):
    """DPU_CHUNK is a build option (8 to any multiple of 8): the applier's buffers
    must hold a sector record and a chunk read back at every size, which
    AddressSanitizer checks on every record coding."""
    for chunk in (8, 256):
        folder = tmp_path / f"chunk{chunk}"
        folder.mkdir()
        proc = subprocess.run(["make", "-s", "-C", C_DIR, f"OUT={folder}",
                               f"{folder}/dpu_powercut",
                               f"CFLAGS=-O1 -g -DDPU_CHUNK={chunk}u -fsanitize=address,undefined "
                               "-fno-sanitize-recover=all -fno-omit-frame-pointer"],
                              capture_output=True, text=True)
        if proc.returncode != 0 and "san" in proc.stderr.lower():
            from conftest import missing_tool  # pylint: disable=import-outside-toplevel
            missing_tool("the compiler's AddressSanitizer/UBSan runtime")
        assert proc.returncode == 0, proc.stderr
        for base, patch, target in _same_size_seed_cases():
            _powercut(str(folder / "dpu_powercut"), base, patch, target, folder, 256)


def test_the_host_driver_runs_the_nor_sector_mode_on_files(c_applier, exported_files, tmp_path):
    """`dpu_apply --in_place --sector_size=N`: the result, a journal of at most three
    sectors, "already applied" the second time, and bad sizes refused in one line."""
    patch = create_patch(exported_files[0], exported_files[1], 1)
    model = tmp_path / "model.tflite"
    model.write_bytes(exported_files[0])
    (tmp_path / "p").write_bytes(patch)

    def run(*flags):
        return subprocess.run([c_applier, "--allow_unsigned", *flags, str(model),
                               str(tmp_path / "p"), str(model)], capture_output=True, text=True)
    done = run("--in_place", "--sector_size=4096")
    assert done.returncode == 0, done.stderr
    assert model.read_bytes() == exported_files[1]
    assert 4096 < (tmp_path / "model.tflite.journal").stat().st_size <= 3 * 4096
    again = run("--in_place", "--sector_size=4096")
    assert again.returncode == 2 and "already applied" in again.stderr
    model.write_bytes(exported_files[0])
    for flags, message in ((("--in_place", "--sector_size=100"), "misconfigured"),
                           (("--in_place", "--sector_size=0"), "at least 256"),
                           (("--sector_size=4096",), "is for --in_place")):
        refused = run(*flags)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert message in refused.stderr
        assert model.read_bytes() == exported_files[0]
