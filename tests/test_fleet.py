"""Catch-up patches and the fleet: any earlier round straight to the latest."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from tflite_edge import patch_format, signing
from tflite_edge.apply import apply_patch
from tflite_edge.errors import PatchError
from tflite_edge.fleet import Releases, Update, apply_update, simulate
from tflite_edge.model_file import ModelFile


@pytest.fixture(scope="module")
def run_dir(exported_run, tmp_path_factory):
    """A copy of the exported run, so the fleet's patch cache stays out of the fixture."""
    result, _ = exported_run
    copy = tmp_path_factory.mktemp("fleet") / "run"
    shutil.copytree(result.out_dir, copy)
    return str(copy)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_every_policy_brings_every_release_to_the_latest(run_dir):
    releases = Releases(run_dir)
    assert len(releases.releases) >= 3
    latest = _read(releases.latest.path)
    for device in releases.releases[:-1]:
        sizes = {}
        for policy in ("chain", "catchup", "full"):
            update = releases.update(device, policy)
            assert apply_update(_read(device.path), update, allow_unsigned=True) == latest, (
                device.round, policy)
            sizes[policy] = update.bytes
        assert len(releases.update(device, "chain").patches) == \
            len([r for r in releases.releases if r.round > device.round])
        assert sizes["full"] > len(latest)        # the file plus header and checks
        cheapest = releases.update(device)
        assert cheapest.bytes == min(sizes.values())


def test_catchup_patch_refuses_a_device_on_another_round(run_dir):
    releases = Releases(run_dir)
    first, second = releases.releases[0], releases.releases[1]
    patch = _read(releases.update(first, "catchup").patches[0])
    with pytest.raises(PatchError, match="another model"):
        apply_patch(_read(second.path), patch, allow_unsigned=True)


def test_simulated_fleet_ends_byte_identical_on_the_latest(run_dir):
    results = simulate(Releases(run_dir), devices=40, online=0.4, seed=3)
    for policy, r in results.items():
        assert r["on_latest"] == 40 and r["files_match"], policy
    assert results["cheapest"]["total_bytes"] <= min(
        results[p]["total_bytes"] for p in ("chain", "catchup", "full"))
    assert results["catchup"]["patch_files"] < results["chain"]["patch_files"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tflite_edge.fleet", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_simulate_command_and_the_plan_policy(run_dir, tmp_path):
    done = _cli("simulate", f"--run_dir={run_dir}", "--devices=6", "--online=0.3", "--seed=2",
                f"--out={tmp_path}/fleet.json")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "fleet.json").read_text())
    assert results == simulate(Releases(run_dir), devices=6, online=0.3, seed=2)
    assert all(r["on_latest"] == 6 for r in results.values())
    full = _cli("plan", f"--run_dir={run_dir}", "--device_round=0", "--policy=full", "--json")
    plan = json.loads(full.stdout)
    assert plan["policy"] == "full" and len(plan["patches"]) == 1
    assert plan["bytes"] > Releases(run_dir).latest.size


def test_plan_command_by_round_and_by_hash(run_dir, tmp_path):
    releases = Releases(run_dir)
    device = releases.releases[0]
    done = _cli("plan", f"--run_dir={run_dir}", f"--device_sha256={device.sha256.hex()}",
                f"--out={tmp_path}/update")
    assert done.returncode == 0, done.stderr
    sent = sorted(str(p) for p in (tmp_path / "update").iterdir())
    model = apply_update(_read(device.path), Update("plan", device.round, releases.latest.round,
                                                    sent), allow_unsigned=True)
    assert hashlib.sha256(model).digest() == releases.latest.sha256
    as_json = _cli("plan", f"--run_dir={run_dir}", f"--device_round={device.round}", "--json")
    plan = json.loads(as_json.stdout)
    assert plan["to_round"] == releases.latest.round and plan["policy"] in ("chain", "catchup")
    assert plan["bytes"] == sum(os.path.getsize(p) for p in plan["patches"])
    assert plan["result_sha256"] == releases.latest.sha256.hex()
    unknown = _cli("plan", f"--run_dir={run_dir}", "--device_round=99")
    assert unknown.returncode == 2
    warning, error = unknown.stderr.strip().splitlines()
    assert warning.startswith("warning: no --sign_key: the patches built here are unsigned")
    assert error == (f"error: no deployed file of {run_dir} has round 99; the device needs a "
                     "fresh install")


def test_patch_command_takes_the_round_from_the_target_folder(run_dir, tmp_path):
    releases = Releases(run_dir)
    first, latest = releases.releases[0], releases.latest
    made = subprocess.run([sys.executable, "-m", "tflite_edge.patch", "create",
                           f"--base={first.path}", f"--target={latest.path}",
                           f"--out={tmp_path}/catchup.patch"], cwd=ROOT, capture_output=True,
                          text=True)
    assert made.returncode == 0, made.stderr
    assert patch_format.decode(_read(tmp_path / "catchup.patch")).header.round == latest.round


def test_c_applier_takes_catchup_and_full_updates(run_dir, c_applier, tmp_path):
    releases = Releases(run_dir)
    device, latest = releases.releases[0], releases.latest
    for policy in ("catchup", "full"):
        patch = releases.update(device, policy).patches[0]
        out = tmp_path / f"{policy}.tflite"
        done = subprocess.run([c_applier, "--allow_unsigned", "--round", str(device.round),
                               "--whole_file", "always", device.path, patch, str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == _read(latest.path)
        # A device already past the latest round refuses the same update.
        stale = subprocess.run([c_applier, "--allow_unsigned", "--round", str(latest.round),
                                device.path, patch, str(tmp_path / "x")], capture_output=True,
                               text=True)
        assert stale.returncode == 2 and "not newer" in stale.stderr
        assert not (tmp_path / "x").exists()


def test_a_round_that_sent_nothing_maps_to_the_release_before_it(tmp_path):
    for r, content in ((0, b"TFL0"), (1, b"TFL1"), (2, b"TFL1"), (3, b"TFL3")):
        folder = tmp_path / f"round_{r:03d}"
        folder.mkdir()
        (folder / "model.tflite").write_bytes(content)
    releases = Releases(str(tmp_path))
    assert [r.round for r in releases.releases] == [0, 1, 3]
    assert releases.find(2).round == 1 and releases.find(3).round == 3
    with pytest.raises(PatchError, match="round 4"):
        releases.find(4)


def test_signed_fleet_updates_verify_with_the_public_key(run_dir, tmp_path):
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    releases = Releases(run_dir, signing.load_signer(str(tmp_path / "k.pem")))
    key = signing.load_public_key(str(tmp_path / "k.pub"))
    device = releases.releases[0]
    for policy in ("catchup", "full"):
        data = _read(releases.update(device, policy).patches[0])
        assert patch_format.decode(data).header.signed
        assert apply_patch(_read(device.path), data, key) == _read(releases.latest.path)
    # The unsigned cache entries of the other tests are not served here.
    assert _read(Releases(run_dir).update(device, "catchup").patches[0]) != \
        _read(releases.update(device, "catchup").patches[0])


def test_cached_patches_follow_the_files_not_the_round_numbers(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    releases = Releases(str(copy))
    first = releases.update(releases.releases[0], "catchup").patches[0]
    # The run is trained again into the same folder: the latest file changes.
    latest = bytearray(_read(releases.latest.path))
    weights = max(ModelFile(bytes(latest)).buffers, key=lambda b: b.length)
    latest[weights.offset] ^= 1
    with open(releases.latest.path, "wb") as f:
        f.write(bytes(latest))
    again = Releases(str(copy))
    second = again.update(again.releases[0], "catchup").patches[0]
    assert first != second
    assert apply_patch(_read(again.releases[0].path), _read(second),
                       allow_unsigned=True) == bytes(latest)
