"""Patch creation, the Python applier, tampering and signatures, and the command line."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tflite_edge import patch_format, signing
from tflite_edge.apply import apply_patch, apply_patch_file
from tflite_edge.create import create_patch, create_whole_file_patch
from tflite_edge.errors import PatchError
from tflite_edge.model_file import ModelFile
from tflite_edge.source import Source


@pytest.fixture(scope="module")
def pair(exported_run):
    """Round 1's base and target files and the patch between them."""
    result, _ = exported_run
    folder = result.out_dir
    base = open(os.path.join(folder, "round_000", "model.tflite"), "rb").read()
    target = open(os.path.join(folder, "round_001", "model.tflite"), "rb").read()
    return base, target, create_patch(base, target, 1)


def test_patch_turns_base_into_target_and_only_touches_weights(pair):
    base, target, patch = pair
    assert apply_patch(base, patch, allow_unsigned=True) == target
    parsed = patch_format.decode(patch, base)
    model = ModelFile(base)
    weights = {model.buffers[t.buffer].offset for op in model.operators
               if op.opcode in (3, 4, 9) for t in (model.tensors[i] for i in op.inputs[1:3])}
    assert parsed.records and all(r.offset in weights for r in parsed.records)
    assert len(patch) < len(base) / 10


def test_any_single_flipped_byte_is_refused(pair):
    base, _, patch = pair
    for at in range(len(patch)):
        broken = bytearray(patch)
        broken[at] ^= 0x40
        with pytest.raises(PatchError):
            apply_patch(base, bytes(broken), allow_unsigned=True)


def test_truncated_or_extended_patches_are_refused(pair):
    base, _, patch = pair
    for length in list(range(0, 200)) + list(range(200, len(patch), 97)) + [len(patch) - 1]:
        with pytest.raises(PatchError):
            apply_patch(base, patch[:length], allow_unsigned=True)
    with pytest.raises(PatchError, match="truncated or extended"):
        apply_patch(base, patch + b"\0", allow_unsigned=True)


def test_wrong_base_and_second_application_are_refused(pair):
    base, target, patch = pair
    with pytest.raises(PatchError, match="already applied"):
        apply_patch(target, patch, allow_unsigned=True)
    other = bytearray(base)
    other[-1] ^= 1
    with pytest.raises(PatchError, match="for another model"):
        apply_patch(bytes(other), patch, allow_unsigned=True)


def test_signatures(pair, tmp_path):
    base, target, _ = pair
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    signing.generate_keypair(str(tmp_path / "o.pem"), str(tmp_path / "o.pub"))
    key = signing.load_public_key(str(tmp_path / "k.pub"))
    signed = create_patch(base, target, 1, signing.load_signer(str(tmp_path / "k.pem")))
    assert apply_patch(base, signed, key) == target
    # Without a key nothing is applied, unless unsigned patches are allowed
    # explicitly (then the hashes are still checked).
    with pytest.raises(PatchError, match="no public key"):
        apply_patch(base, signed)
    assert apply_patch(base, signed, allow_unsigned=True) == target
    with pytest.raises(PatchError, match="signed by another key"):
        apply_patch(base, signed, signing.load_public_key(str(tmp_path / "o.pub")))
    with pytest.raises(PatchError, match="not signed"):
        apply_patch(base, create_patch(base, target, 1), key)
    # Signed by another key under this key's id, checksum fixed: the signature,
    # not the checksum or the id, is what a key trusts.
    other = signing.load_signer(str(tmp_path / "o.pem"))
    other.key_id = signing.load_signer(str(tmp_path / "k.pem")).key_id
    with pytest.raises(PatchError, match="not valid for this public key"):
        apply_patch(base, create_patch(base, target, 1, other), key)


def test_files_of_different_structure_are_refused(pair):
    base, _, _ = pair
    with pytest.raises(PatchError, match="differ in size"):
        create_patch(base, base + b"\0" * 16, 1)
    with pytest.raises(PatchError, match="not a TFLite model"):
        create_patch(b"\0" * len(base), base, 1)


def test_changes_outside_weight_buffers_need_a_whole_file_update(pair):
    base, _, _ = pair
    tensor = next(t for t in ModelFile(base).tensors if t.scale_offset and len(t.scales) > 1)
    changed = bytearray(base)
    changed[tensor.scale_offset:tensor.scale_offset + 4] = np.float32(0.5).tobytes()
    with pytest.raises(PatchError, match=f"differ at byte {tensor.scale_offset}, outside"):
        create_patch(base, bytes(changed), 2)
    whole = create_whole_file_patch(Source.of(base), Source.of(bytes(changed)), 2)
    assert [r.kind for r in patch_format.decode(whole).records] == [
        patch_format.KIND_WHOLE_FILE]
    with pytest.raises(PatchError, match="whole model"):
        apply_patch(base, whole, allow_unsigned=True)   # unsigned: refused by default
    assert apply_patch(base, whole, whole_file="always", allow_unsigned=True) == bytes(changed)
    with pytest.raises(PatchError, match="whole model"):
        apply_patch(base, whole, whole_file="never", allow_unsigned=True)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tflite_edge.patch", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_command_line_create_inspect_apply_in_place(pair, tmp_path):
    base, target, _ = pair
    (tmp_path / "a.tflite").write_bytes(base)
    (tmp_path / "b.tflite").write_bytes(target)
    assert _cli("keygen", f"--private={tmp_path}/k.pem", f"--public={tmp_path}/k.pub"
                ).returncode == 0
    made = _cli("create", f"--base={tmp_path}/a.tflite", f"--target={tmp_path}/b.tflite",
                f"--out={tmp_path}/p.patch", "--round=1", f"--sign_key={tmp_path}/k.pem")
    assert made.returncode == 0 and "signed" in made.stdout and not made.stderr, made.stderr
    shown = _cli("inspect", f"--patch={tmp_path}/p.patch", f"--base={tmp_path}/a.tflite")
    assert "round 1" in shown.stdout and "information bound" in shown.stdout
    assert "signed by key id " + signing.load_signer(str(tmp_path / "k.pem")).key_id.hex() \
        in shown.stdout
    applied = _cli("apply", f"--base={tmp_path}/a.tflite", f"--patch={tmp_path}/p.patch",
                   "--initial_round=0", f"--public_key={tmp_path}/k.pub")
    assert applied.returncode == 0, applied.stderr
    assert "verified (key id" in applied.stdout
    assert (tmp_path / "a.tflite").read_bytes() == target
    again = _cli("apply", f"--base={tmp_path}/a.tflite", f"--patch={tmp_path}/p.patch")
    assert again.returncode == 2 and again.stderr.strip() == (
        "error: patch is already applied: the model is its result")
    assert (tmp_path / "a.tflite").read_bytes() == target
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
    assert json_round(tmp_path / "a.tflite.state") == 1


@pytest.mark.parametrize("args, message", [
    (["apply", "--base=/no/model", "--patch=/no/patch"], "cannot read model /no/model"),
    (["apply", "--base=x"], "apply needs --patch"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    ([], "give a command: create, rotate, apply, inspect, keygen"),
    (["inspect", "--patch=README.md"], "not a DPU patch"),
    (["inspect", "--patch=p", "--public_key=k"], "inspect does not take --public_key"),
    (["apply", "--base=a", "--patch=p", "--whole_file=sometimes"], "flag --whole_file"),
    (["apply", "--base=a", "--patch=p", "--initial_round=-1"], "flag --initial_round"),
    (["apply", "--base=a", "--patch=p", "--no_state", "--initial_round=0"],
     "--no_state excludes"),
    (["apply", "--base=a", "--patch=p", "--flagfile=/no/such.flags"], "/no/such.flags"),
    (["inspect", "--patch=p", "stray"], "unexpected argument(s): stray"),
])
def test_command_line_errors_are_one_line(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_corrupt_patch_leaves_the_base_file_untouched(pair, tmp_path):
    base, _, patch = pair
    (tmp_path / "m.tflite").write_bytes(base)
    broken = bytearray(patch)
    broken[len(broken) // 2] ^= 1
    (tmp_path / "p").write_bytes(bytes(broken))
    with pytest.raises(PatchError):
        apply_patch_file(str(tmp_path / "m.tflite"), str(tmp_path / "p"), allow_unsigned=True)
    assert hashlib.sha256((tmp_path / "m.tflite").read_bytes()).digest() == hashlib.sha256(
        base).digest()


def test_state_file_refuses_replays_and_downgrades(exported_run, tmp_path):
    result, _ = exported_run
    files = [open(os.path.join(result.out_dir, f"round_{r:03d}", "model.tflite"), "rb").read()
             for r in range(3)]
    model, state = tmp_path / "m.tflite", tmp_path / "m.tflite.state"
    model.write_bytes(files[0])
    for r in (1, 2):
        (tmp_path / f"p{r}").write_bytes(create_patch(files[r - 1], files[r], r))
    assert _cli("apply", f"--base={model}", f"--patch={tmp_path}/p1", "--allow_unsigned",
                "--initial_round=0").returncode == 0
    assert json_round(state) == 1
    # An attacker replays round 1's patch against a device that was reset to
    # round 0's file: the base matches, the round does not.
    model.write_bytes(files[0])
    replay = _cli("apply", f"--base={model}", f"--patch={tmp_path}/p1", "--allow_unsigned")
    assert replay.returncode == 2 and "replayed or downgraded" in replay.stderr
    assert model.read_bytes() == files[0]
    # A patch claiming an older round (a downgrade) is refused too.
    model.write_bytes(files[1])
    (tmp_path / "old").write_bytes(create_patch(files[1], files[2], 1))
    assert "replayed or downgraded" in _cli("apply", f"--base={model}", "--allow_unsigned",
                                            f"--patch={tmp_path}/old").stderr
    assert _cli("apply", f"--base={model}", f"--patch={tmp_path}/p2",
                "--allow_unsigned").returncode == 0
    assert json_round(state) == 2 and model.read_bytes() == files[2]
    state.write_text("garbage")
    assert "state file" in _cli("apply", f"--base={model}", f"--patch={tmp_path}/p2",
                                "--allow_unsigned").stderr


def json_round(path):
    import json
    return json.loads(path.read_text())["round"]


def test_command_line_whole_file_patch_and_help(pair, tmp_path):
    base, target, _ = pair
    (tmp_path / "a.tflite").write_bytes(base)
    (tmp_path / "b.tflite").write_bytes(target + b"\0" * 16)   # another size: no delta fits
    made = _cli("create", f"--base={tmp_path}/a.tflite", f"--target={tmp_path}/b.tflite",
                f"--out={tmp_path}/w.patch", "--round=1", "--whole")
    assert made.returncode == 0, made.stderr
    records = patch_format.decode((tmp_path / "w.patch").read_bytes()).records
    assert [r.kind for r in records] == [patch_format.KIND_WHOLE_FILE]
    applied = _cli("apply", f"--base={tmp_path}/a.tflite", f"--patch={tmp_path}/w.patch",
                   "--no_state", "--allow_unsigned", "--whole_file=always")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "a.tflite").read_bytes() == target + b"\0" * 16
    shown = _cli("--help")
    assert shown.returncode == 0 and "create" in shown.stdout and "--whole" in shown.stdout
