"""The plain-Java Ed25519 verifier against OpenSSL's (through `cryptography`).

Android before API 33 has no Ed25519 in java.security, so the JVM applier
ships its own verifier (PureEd25519Verifier). It must accept exactly what
OpenSSL accepts: checked here on the RFC 8032 test vectors and on 10,000+
cases of tests/ed25519_cases.py. The applier's own key check (PatchKey, which refuses the
weak and non-canonical keys before any verification) is tested in
test_android.py.
"""

import hashlib
import os
import subprocess

import ed25519_cases

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "Ed25519Cases.java")


def test_pure_java_ed25519_agrees_with_openssl(jar):
    cases = ed25519_cases.cases(int(os.environ.get("DPU_ED25519_CASES", "10000")))
    lines = "".join(f"{k.hex()} {m.hex()} {s.hex()}\n" for _, k, m, s in cases)
    proc = subprocess.run(["java", "-cp", jar, HARNESS], input=lines, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.split()
    assert got[-1] == "JdkEd25519Verifier"
    ed25519_cases.check(cases, got[:-1])


def test_without_platform_ed25519_the_jar_verifies_with_its_own(exported_run, jar, tmp_path):
    """A JVM whose providers lack Ed25519 (SunEC removed) still checks signatures."""
    from tflite_edge import signing  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    result, _ = exported_run
    base = open(os.path.join(result.out_dir, "round_000", "model.tflite"), "rb").read()
    target = open(os.path.join(result.out_dir, "round_001", "model.tflite"), "rb").read()
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    signer = signing.load_signer(str(tmp_path / "k.pem"))
    patch = create_patch(base, target, 1, signer)
    (tmp_path / "good.patch").write_bytes(patch)
    forged = bytearray(patch)
    forged[200] ^= 1   # inside the signature; the checksum redone so only it can refuse
    forged[-32:] = hashlib.sha256(bytes(forged[:-32])).digest()
    (tmp_path / "bad.patch").write_bytes(bytes(forged))
    (tmp_path / "no_ec.security").write_text("security.provider.3=SunRsaSign\n")
    harness = subprocess.run(["java", f"-Djava.security.properties={tmp_path}/no_ec.security",
                              "-cp", jar, HARNESS], input="", capture_output=True, text=True)
    assert harness.stdout.split() == ["PureEd25519Verifier"], harness.stderr
    for name, code in (("bad", 2), ("good", 0)):
        (tmp_path / "m.tflite").write_bytes(base)
        proc = subprocess.run(["java", f"-Djava.security.properties={tmp_path}/no_ec.security",
                               "-jar", jar, "apply", f"--base={tmp_path}/m.tflite",
                               f"--patch={tmp_path}/{name}.patch", "--no_state",
                               f"--public_key={tmp_path}/k.pub"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr
        assert code == 0 or "signature is not valid" in proc.stderr, proc.stderr
        assert (tmp_path / "m.tflite").read_bytes() == (target if code == 0 else base)
