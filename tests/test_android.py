"""The JVM applier (tflite_edge/android) against the Python and C appliers.

The same real run's files, the same catch-up and whole-file updates, the
same hostile patches and corruptions, the same state rules, and a
differential run over mutated patches: the three appliers must accept the
same patches, write the same bytes and refuse the same ones.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest

import hostile
from conftest import build_c, round_folders, run_jar
from tflite_edge import signing
from tflite_edge.create import create_patch
from tflite_edge.fleet import Releases


def test_the_jar_reproduces_every_round_of_a_real_run(exported_run, jar, tmp_path):
    result, _ = exported_run
    folders = round_folders(result)
    device = tmp_path / "model.tflite"
    device.write_bytes(open(os.path.join(folders[0], "model.tflite"), "rb").read())
    initialise = ["--initial_round=0"]   # the run's patches are unsigned (no --sign_key)
    applied = 0
    for folder in folders[1:]:
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            proc = run_jar(jar, "apply", f"--base={device}", f"--patch={patch}",
                           "--allow_unsigned", *initialise)
            assert "UNSIGNED: no signature was checked" in proc.stdout
            assert proc.returncode == 0, proc.stderr
            initialise = []
            applied += 1
        assert device.read_bytes() == open(os.path.join(folder, "model.tflite"), "rb").read()
    assert applied >= 2
    state = json.loads((tmp_path / "model.tflite.state").read_text())
    assert state["sha256"] == hashlib.sha256(device.read_bytes()).hexdigest()
    # A second application: refused, the model kept.
    proc = run_jar(jar, "apply", f"--base={device}", f"--patch={patch}", "--allow_unsigned")
    assert proc.returncode == 2 and proc.stderr == (
        "error: patch is already applied: the model is its result\n")


def test_the_jar_takes_catchup_and_whole_file_updates(exported_run, jar, tmp_path):
    result, _ = exported_run
    releases = Releases(result.out_dir)
    device, latest = releases.releases[0], releases.latest
    for policy, extra in (("catchup", []), ("full", ["--whole_file=always"])):
        patch = releases.update(device, policy).patches[0]
        out = tmp_path / f"{policy}.tflite"
        proc = run_jar(jar, "apply", f"--base={device.path}", f"--patch={patch}", f"--out={out}",
                       "--no_state", "--allow_unsigned", *extra)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == open(latest.path, "rb").read()
    refused = run_jar(jar, "apply", f"--base={device.path}",
                      f"--patch={releases.update(device, 'full').patches[0]}",
                      f"--out={tmp_path}/x.tflite", "--no_state", "--allow_unsigned")
    assert refused.returncode == 2 and "whole model" in refused.stderr
    assert not (tmp_path / "x.tflite").exists()


def test_forty_corruptions_are_refused_and_the_base_is_untouched(exported_run, jar, tmp_path):
    result, _ = exported_run
    base = open(os.path.join(result.out_dir, "round_000", "model.tflite"), "rb").read()
    target = open(os.path.join(result.out_dir, "round_001", "model.tflite"), "rb").read()
    patch = create_patch(base, target, 1)
    (tmp_path / "m.tflite").write_bytes(base)
    step = len(patch) // 40
    refused = 0
    for at in range(0, 40 * step, step):
        broken = bytearray(patch)
        broken[at] ^= 0x04
        (tmp_path / "p").write_bytes(bytes(broken))
        proc = run_jar(jar, "apply", f"--base={tmp_path}/m.tflite", f"--patch={tmp_path}/p",
                       f"--out={tmp_path}/o.tflite", "--no_state", "--allow_unsigned")
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), at
        assert (tmp_path / "m.tflite").read_bytes() == base and not (tmp_path / "o.tflite").exists()
        refused += 1
    assert refused == 40
    assert [n for n in os.listdir(tmp_path) if ".partial" in n] == []


def test_signatures_from_the_python_tools(exported_run, jar, tmp_path):
    result, _ = exported_run
    base = os.path.join(result.out_dir, "round_000", "model.tflite")
    target = os.path.join(result.out_dir, "round_001", "model.tflite")
    for name in ("good", "other"):
        signing.generate_keypair(str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.pub"))
    made = subprocess.run([sys.executable, "-m", "tflite_edge.patch", "create", f"--base={base}",
                           f"--target={target}", f"--out={tmp_path}/signed.patch", "--round=1",
                           f"--sign_key={tmp_path}/good.pem"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert made.returncode == 0, made.stderr
    (tmp_path / "unsigned.patch").write_bytes(create_patch(open(base, "rb").read(),
                                                           open(target, "rb").read(), 1))
    cases = [("signed.patch", "good", 0, ""), ("signed.patch", "other", 2, "another key"),
             ("unsigned.patch", "good", 2, "not signed")]
    for patch, key, code, message in cases:
        proc = run_jar(jar, "apply", f"--base={base}", f"--patch={tmp_path}/{patch}",
                       f"--out={tmp_path}/o.tflite", f"--public_key={tmp_path}/{key}.pub",
                       "--no_state")
        assert proc.returncode == code and message in proc.stderr, (patch, key, proc.stderr)
        if code == 0:
            assert (tmp_path / "o.tflite").read_bytes() == open(target, "rb").read()
            os.unlink(tmp_path / "o.tflite")


@pytest.mark.parametrize("case", hostile.cases(), ids=[c.name for c in hostile.cases()])
def test_the_jar_refuses_each_hostile_patch_with_its_own_check(case, jar, tmp_path):
    (tmp_path / "model.tflite").write_bytes(hostile.tiny_model())
    (tmp_path / "p").write_bytes(case.patch)
    _, public = hostile.test_key()
    (tmp_path / "k.pub").write_bytes(public)
    key = [f"--public_key={tmp_path}/k.pub"] if case.signed else ["--allow_unsigned"]
    proc = run_jar(jar, "apply", f"--base={tmp_path}/model.tflite", f"--patch={tmp_path}/p",
                   f"--out={tmp_path}/out.tflite", "--no_state", *key)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert case.python in proc.stderr, proc.stderr
    assert (tmp_path / "model.tflite").read_bytes() == hostile.tiny_model()
    assert not (tmp_path / "out.tflite").exists()


def test_the_jar_refuses_weak_and_malformed_keys(jar, tmp_path):
    for n, raw in enumerate(hostile.small_order_keys() + hostile.malformed_keys()):
        (tmp_path / "k.pub").write_bytes(raw)
        proc = run_jar(jar, "check_key", f"--public_key={tmp_path}/k.pub")
        assert proc.returncode == 2, (n, proc.stdout)
        assert "small order" in proc.stderr or "not a valid Ed25519 point" in proc.stderr
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    assert run_jar(jar, "check_key", f"--public_key={tmp_path}/k.pub").returncode == 0
    (tmp_path / "long.pub").write_bytes((tmp_path / "k.pub").read_bytes() + b"\0")
    proc = run_jar(jar, "check_key", f"--public_key={tmp_path}/long.pub")
    assert proc.returncode == 2 and "32-byte" in proc.stderr


def test_the_jar_keeps_the_state_rules(jar, tmp_path):
    base = hostile.tiny_model()
    from test_device_state import _variant  # pylint: disable=import-outside-toplevel
    files = [base, _variant(base, 1), _variant(_variant(base, 1), 2)]
    model = tmp_path / "model.tflite"
    model.write_bytes(base)
    for r in (1, 2):
        (tmp_path / f"p{r}").write_bytes(create_patch(files[r - 1], files[r], r))
    apply = lambda *a: run_jar(jar, "apply", f"--base={model}", "--allow_unsigned", *a)  # noqa: E731
    missing = apply(f"--patch={tmp_path}/p1")
    assert missing.returncode == 2 and "--initial_round" in missing.stderr
    assert apply(f"--patch={tmp_path}/p1", "--initial_round=0").returncode == 0
    state = tmp_path / "model.tflite.state"
    assert json.loads(state.read_text()) == {
        "round": 1, "sha256": hashlib.sha256(files[1]).hexdigest(), "release_time": 1790000000}
    for content in ('{"round": true, "sha256": "%s"}', '{"round": 1.0, "sha256": "%s"}',
                    '{"round": -1, "sha256": "%s"}', "garbage"):
        saved = state.read_text()
        state.write_text(content.replace("%s", hashlib.sha256(files[1]).hexdigest()))
        proc = apply(f"--patch={tmp_path}/p2")
        assert proc.returncode == 2 and "state file" in proc.stderr, content
        state.write_text(saved)
    # replayed on a device reset to round 0's file
    model.write_bytes(base)
    replay = apply(f"--patch={tmp_path}/p1")
    assert replay.returncode == 2 and "replayed or downgraded" in replay.stderr
    model.write_bytes(files[1])
    assert apply(f"--patch={tmp_path}/p2").returncode == 0 and model.read_bytes() == files[2]
    # The Python applier reads the state the JVM one wrote, and the other way round.
    from tflite_edge.apply import apply_patch_file  # pylint: disable=import-outside-toplevel
    (tmp_path / "p3").write_bytes(create_patch(files[2], _variant(files[2], 3), 3))
    apply_patch_file(str(model), str(tmp_path / "p3"), state_path=str(state),
                     allow_unsigned=True)
    assert json.loads(state.read_text())["round"] == 3


def test_two_jvms_applying_at_once_never_both_succeed(jar, tmp_path):
    from test_device_state import _variant  # pylint: disable=import-outside-toplevel
    base = hostile.tiny_model()
    model = tmp_path / "model.tflite"
    rivals = [_variant(base, 5), _variant(base, 6)]
    for n, target in enumerate(rivals):
        (tmp_path / f"p{n}").write_bytes(create_patch(base, target, 1))
    for trial in range(3):
        model.write_bytes(base)
        (tmp_path / "model.tflite.state").write_text(json.dumps(
            {"round": 0, "sha256": hashlib.sha256(base).hexdigest()}))
        codes = []
        threads = [threading.Thread(target=lambda n=n: codes.append(run_jar(
            jar, "apply", f"--base={model}", f"--patch={tmp_path}/p{n}",
            "--allow_unsigned").returncode))
            for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [0, 2], trial
        assert model.read_bytes() in rivals


def test_three_appliers_agree_on_mutated_patches(jar, tmp_path):
    """A few thousand structure-aware mutations: same verdicts, same files (by hash)."""
    from benchmarks import fuzz  # pylint: disable=import-outside-toplevel
    judged = fuzz.generate(str(tmp_path), 4500, seed=13, batch_size=900)   # every setting
    c_line, _ = fuzz.run_batches([build_c("dpu_batch", tmp_path)], judged["files"])
    java_line, _ = fuzz.run_batches(["java", "-jar", jar, "batch"], judged["files"])
    counts = judged["verdicts"]
    expected = (f"4500 inputs: {counts['accepted']} accepted, "
                f"{counts['refused at the result hash']} refused at the result hash, "
                f"{counts['refused']} refused; no disagreement")
    # The JVM reads each patch once; the C applier's changing-storage inputs
    # are counted apart (refused, or applied exactly as verified).
    assert java_line == expected
    assert c_line.startswith("4500 inputs") and "no disagreement; changing storage" in c_line
    assert counts["accepted"] > 200


UPDATER_CHAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java",
                             "UpdaterChain.java")


def test_the_android_helper_swaps_models_under_running_readers(exported_run, jar, tmp_path):
    """ModelUpdater: first launch, a five-patch signed chain, three reader threads throughout.

    The rounds' models come from a real run (0 to 3; rounds 4 and 5 go back
    to round 2's weights and forward to round 3's, as a server's rollback and
    fix would). The harness checks every read against the server's models
    and the interpreter it came from, replays, the held lease, the second
    launch (tests/java/UpdaterChain.java).
    """
    result, _ = exported_run
    models = [os.path.join(result.out_dir, f"round_{r:03d}", "model.tflite") for r in range(4)]
    chain = [models[0], models[1], models[2], models[3], models[2], models[3]]
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    signer = signing.load_signer(str(tmp_path / "k.pem"))
    patches = []
    for r in range(1, len(chain)):
        path = tmp_path / f"r{r}.patch"
        path.write_bytes(create_patch(open(chain[r - 1], "rb").read(),
                                      open(chain[r], "rb").read(), r, signer,
                                      release_time=1_700_000_000 + r))
        patches.append(str(path))
    device = tmp_path / "device"
    device.mkdir()
    proc = subprocess.run(["java", "-cp", jar, UPDATER_CHAIN, str(device), str(tmp_path / "k.pub"),
                           models[0], *patches, "--", *chain], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = dict(part.split("=") for part in proc.stdout.split())
    print(proc.stdout.strip())
    assert int(figures["updates"]) == 5 and int(figures["reads"]) > 100, proc.stdout
    assert figures["opened"] == figures["closed"] == "7", proc.stdout   # 1 + 5 + the reopen
    assert (device / "model.tflite").read_bytes() == open(chain[-1], "rb").read()
    state = json.loads((device / "model.tflite.state").read_text())
    assert state["round"] == 5 and state["release_time"] == 1_700_000_005
    assert sorted(os.listdir(device)) == ["model.tflite", "model.tflite.state",
                                          "model.tflite.state.lock"]


def test_the_gradle_module_runs_the_junit5_tests_the_pom_runs():
    """No Android SDK here, so the Gradle module is checked against the Maven build
    that does run: same JUnit version, the JUnit 5 platform switched on (Gradle
    otherwise looks for JUnit 4 tests and runs none), the same test sources."""
    import re as regex  # pylint: disable=import-outside-toplevel
    android = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "tflite_edge", "android")
    gradle = open(os.path.join(android, "build.gradle")).read()
    pom = open(os.path.join(android, "pom.xml")).read()
    version = regex.search(r"<junit.version>([\d.]+)</junit.version>", pom).group(1)
    assert f"testImplementation 'org.junit.jupiter:junit-jupiter:{version}'" in gradle
    assert regex.search(r"unitTests\.all\s*\{\s*useJUnitPlatform\(\)", gradle)
    assert "junit-platform-launcher" in gradle
    assert "src/test/java" not in gradle or "test {" in gradle   # Gradle's default test folder
    tests = os.listdir(os.path.join(android, "src", "test", "java", "org", "tfdpu", "patch"))
    assert any(name.endswith("Test.java") for name in tests)
