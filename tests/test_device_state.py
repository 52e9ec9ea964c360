"""The device's state and files: initialisation, types, faults, crashes, concurrency.

Each test applies real patches between the tiny model and copies of it with
changed weights, through `apply_patch_file` or the command lines.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import hostile
from conftest import ROOT
from tflite_edge import device_state
from tflite_edge.apply import apply_patch_file
from tflite_edge.create import create_patch
from tflite_edge.errors import PatchError
from tflite_edge.regions import writable_regions


def _variant(base: bytes, seed: int) -> bytes:
    """The base with a few int8 weights changed (a later round's file)."""
    out = bytearray(base)
    region = writable_regions(base, len(base))[4]
    rng = np.random.RandomState(seed)
    for at in rng.choice(region.count, 3, replace=False):
        out[region.offset + at] = (out[region.offset + at] + 1 + seed) % 256
    return bytes(out)


@pytest.fixture()
def chain(tmp_path):
    """A device holding round 0, and patches to rounds 1 and 2 (plus a rival round 1)."""
    files = [hostile.tiny_model()]
    for r in (1, 2):
        files.append(_variant(files[-1], r))
    rival = _variant(files[0], 7)
    (tmp_path / "model.tflite").write_bytes(files[0])
    for r in (1, 2):
        (tmp_path / f"p{r}").write_bytes(create_patch(files[r - 1], files[r], r))
    (tmp_path / "rival").write_bytes(create_patch(files[0], rival, 1))
    return tmp_path, files, rival


def _apply(folder, patch, **kwargs):
    """Applies an (unsigned) patch of the chain: these tests are about the state machinery."""
    return apply_patch_file(str(folder / "model.tflite"), str(folder / patch),
                            state_path=str(folder / "model.tflite.state"), allow_unsigned=True,
                            **kwargs)


def _state(folder):
    return json.loads((folder / "model.tflite.state").read_text())


def test_a_new_device_is_initialised_once_explicitly(chain):
    folder, files, _ = chain
    with pytest.raises(PatchError, match="does not exist; initialise"):
        _apply(folder, "p1")
    assert (folder / "model.tflite").read_bytes() == files[0]
    _apply(folder, "p1", initial_round=0)
    assert _state(folder) == {"round": 1, "sha256": hashlib.sha256(files[1]).hexdigest(),
                              "release_time": 1790000000}
    with pytest.raises(PatchError, match="already records its round"):
        _apply(folder, "p2", initial_round=0)
    _apply(folder, "p2")
    assert _state(folder)["round"] == 2 and (folder / "model.tflite").read_bytes() == files[2]


def test_a_deleted_state_file_does_not_let_an_old_patch_in(chain):
    folder, files, _ = chain
    _apply(folder, "p1", initial_round=0)
    os.unlink(folder / "model.tflite.state")
    (folder / "model.tflite").write_bytes(files[0])   # and the old model restored
    with pytest.raises(PatchError, match="does not exist"):
        _apply(folder, "p1")
    assert (folder / "model.tflite").read_bytes() == files[0]


@pytest.mark.parametrize("content, message", [
    ('{"round": true, "sha256": "%s"}', "no round"),
    ('{"round": 1.0, "sha256": "%s"}', "no round"),
    ('{"round": -1, "sha256": "%s"}', "no round"),
    ('{"round": 4294967296, "sha256": "%s"}', "no round"),
    ('{"round": 0, "sha256": "%s0"}', "64-digit sha256"),
    ('{"round": 0}', "64-digit sha256"),
    ('[0, "%s"]', "not an object"),
    ('{"round": 0, "sha256": "%s", "pending": {"round": "1"}}', "pending update has no round"),
    ("not json %s", "unreadable"),
])
def test_the_state_file_is_type_checked(chain, content, message):
    folder, files, _ = chain
    digest = hashlib.sha256(files[0]).hexdigest()
    (folder / "model.tflite.state").write_text(content.replace("%s", digest))
    with pytest.raises(PatchError, match=message):
        _apply(folder, "p1")
    assert (folder / "model.tflite").read_bytes() == files[0]


def test_a_state_for_another_model_is_refused(chain):
    folder, files, _ = chain
    _apply(folder, "p1", initial_round=0)
    (folder / "model.tflite").write_bytes(_variant(files[1], 9))   # swapped behind its back
    with pytest.raises(PatchError, match="describes another model"):
        _apply(folder, "p2")


def test_a_state_that_cannot_be_written_leaves_the_model_untouched(chain, monkeypatch):
    folder, files, _ = chain
    _apply(folder, "p1", initial_round=0)
    before = (folder / "model.tflite.state").read_bytes()

    def full_disk(self, doc):
        raise OSError(28, "No space left on device", self.path)
    monkeypatch.setattr(device_state.StateFile, "_write", full_disk)
    with pytest.raises(PatchError, match="No space left on device.*the model is unchanged"):
        _apply(folder, "p2")
    assert (folder / "model.tflite").read_bytes() == files[1]
    assert (folder / "model.tflite.state").read_bytes() == before
    assert not [n for n in os.listdir(folder) if n.endswith(".partial")]


@pytest.mark.parametrize("crash", ["before the model is renamed", "after it"])
def test_a_crash_between_the_two_state_writes_resolves_by_the_models_hash(chain, monkeypatch,
                                                                         crash):
    folder, files, _ = chain
    _apply(folder, "p1", initial_round=0)

    class PowerCut(BaseException):
        pass

    if crash == "after it":
        monkeypatch.setattr(device_state.StateFile, "commit",
                            lambda self: (_ for _ in ()).throw(PowerCut()))
    else:
        from tflite_edge import apply as applier
        real = applier.os.replace

        def cut(src, dst):
            if dst.endswith("model.tflite"):
                raise PowerCut()
            return real(src, dst)
        monkeypatch.setattr(applier.os, "replace", cut)
    with pytest.raises(PowerCut):
        _apply(folder, "p2")
    monkeypatch.undo()
    assert "pending" in _state(folder)
    if crash == "after it":
        assert (folder / "model.tflite").read_bytes() == files[2]
        with pytest.raises(PatchError, match="already applied"):
            _apply(folder, "p2")
        with pytest.raises(PatchError, match="replayed or downgraded"):
            _apply(folder, "rival")
    else:
        assert (folder / "model.tflite").read_bytes() == files[1]
        _apply(folder, "p2")   # the device is still at round 1: the patch goes in
        assert (folder / "model.tflite").read_bytes() == files[2]
    assert _state(folder) == {"round": 2, "sha256": hashlib.sha256(files[2]).hexdigest(),
                              "release_time": 1790000000}


def test_concurrent_applies_of_one_model_never_both_succeed(chain):
    folder, files, rival = chain
    _apply(folder, "p1", initial_round=0)
    (folder / "p1b").write_bytes(create_patch(files[1], _variant(files[1], 11), 2))
    successes = []
    for trial in range(8):
        (folder / "model.tflite").write_bytes(files[1])
        (folder / "model.tflite.state").write_text(json.dumps(
            {"round": 1, "sha256": hashlib.sha256(files[1]).hexdigest()}))
        outcomes = []
        threads = [threading.Thread(target=lambda p=p: outcomes.append(_try(folder, p)))
                   for p in ("p2", "p1b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == [False, True], trial
        model = (folder / "model.tflite").read_bytes()
        assert _state(folder)["sha256"] == hashlib.sha256(model).hexdigest()
        successes.append(outcomes)
    assert len(successes) == 8


def _try(folder, patch):
    try:
        _apply(folder, patch)
        return True
    except PatchError:
        return False


def test_an_applied_model_keeps_its_mode_and_its_symlink(chain):
    folder, files, _ = chain
    real = folder / "models" / "current.tflite"
    real.parent.mkdir()
    os.replace(folder / "model.tflite", real)
    os.chmod(real, 0o640)
    os.symlink(real, folder / "model.tflite")
    _apply(folder, "p1", initial_round=0)
    assert os.path.islink(folder / "model.tflite")
    assert real.read_bytes() == files[1]
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(folder / "model.tflite.state").st_mode) == 0o644 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_c_driver_never_truncates_or_deletes_what_it_did_not_create(chain, c_applier):
    folder, files, _ = chain
    model, patch = folder / "model.tflite", folder / "p1"
    # OUT equal to BASE, even through another name: refused, the model intact.
    os.link(model, folder / "alias.tflite")
    for out in (model, folder / "alias.tflite"):
        proc = subprocess.run([c_applier, "--allow_unsigned", str(model), str(patch), str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "OUT is BASE" in proc.stderr
        assert model.read_bytes() == files[0]
    # A failed apply leaves an existing OUT as it was, through a symlink too.
    existing = folder / "existing.tflite"
    existing.write_bytes(b"keep me")
    os.chmod(existing, 0o600)
    os.symlink(existing, folder / "link.tflite")
    for out in (existing, folder / "link.tflite"):
        proc = subprocess.run([c_applier, "--allow_unsigned", str(model), str(folder / "p2"),
                               str(out)], capture_output=True, text=True)
        assert proc.returncode == 2 and "another model" in proc.stderr
        assert existing.read_bytes() == b"keep me"
    assert os.path.islink(folder / "link.tflite")
    # A successful apply through the link replaces its target and keeps the link.
    proc = subprocess.run([c_applier, "--allow_unsigned", str(model), str(patch),
                           str(folder / "link.tflite")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(folder / "link.tflite") and existing.read_bytes() == files[1]
    assert stat.S_IMODE(os.stat(existing).st_mode) == 0o600
    assert not [n for n in os.listdir(folder) if ".tflite." in n]
    # In place, with the journal beside the model.
    proc = subprocess.run([c_applier, "--in_place", "--allow_unsigned", str(model), str(patch),
                           str(model)], capture_output=True, text=True)
    assert proc.returncode == 0 and model.read_bytes() == files[1]
    proc = subprocess.run([c_applier, "--in_place", "--allow_unsigned", str(model), str(patch),
                           str(existing)], capture_output=True, text=True)
    assert proc.returncode == 2 and "OUT must be BASE" in proc.stderr


def test_command_line_initialises_and_refuses_missing_state(chain):
    folder, files, _ = chain

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tflite_edge.patch", "apply",
                               "--allow_unsigned", *args], cwd=ROOT, capture_output=True,
                              text=True)
    model = f"--base={folder}/model.tflite"
    missing = cli(model, f"--patch={folder}/p1")
    assert missing.returncode == 2 and "--initial_round" in missing.stderr
    assert cli(model, f"--patch={folder}/p1", "--initial_round=0").returncode == 0
    again = cli(model, f"--patch={folder}/p2", "--initial_round=0")
    assert again.returncode == 2 and "already records its round" in again.stderr
    assert cli(model, f"--patch={folder}/p2").returncode == 0
    assert (folder / "model.tflite").read_bytes() == files[2]
