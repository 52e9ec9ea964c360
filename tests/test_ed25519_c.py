"""The microcontroller recipe's Ed25519 verifier (tflite_edge/c/ed25519: Monocypher
plus SHA-512) against OpenSSL's, and plugged into the C applier.

Monocypher's check is cofactored (8([S]B - [h]A - R) = 0), which RFC 8032
permits; OpenSSL's is not. They may differ only where the appliers' key check
refuses the key, or the key or R carries a small-order component, which no
honest key generator or signer produces: `ed25519_cases.check(cofactored=True)`
allows exactly those and nothing else.
"""

import hashlib
import os
import shutil
import subprocess

import pytest

import ed25519_cases
import hostile
from conftest import C_DIR, ROOT, missing_tool
from tflite_edge import signing
from tflite_edge.create import create_patch

ED25519_DIR = os.path.join(C_DIR, "ed25519")
CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "ed25519_cases.c")


@pytest.fixture(scope="module")
def monocypher():
    folder = os.environ.get("DPU_MONOCYPHER", os.path.join(ROOT, ".venv", "monocypher"))
    if not os.path.exists(os.path.join(folder, "monocypher.c")):
        missing_tool(f"Monocypher's sources in {folder} (make fetches them: "
                     "tflite_edge/c/ed25519/fetch_monocypher.py)")
    return folder


@pytest.fixture(scope="module")
def builds(monocypher, tmp_path_factory):
    out = tmp_path_factory.mktemp("monocypher")
    subprocess.run(["gcc", "-O2", "-std=c99", "-c", os.path.join(monocypher, "monocypher.c"),
                    "-o", str(out / "monocypher.o")], check=True)
    subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    f"-I{monocypher}", f"-I{ED25519_DIR}", CASES,
                    os.path.join(ED25519_DIR, "dpu_ed25519.c"), str(out / "monocypher.o"),
                    "-o", str(out / "cases")], check=True)
    proc = subprocess.run(["make", "-C", C_DIR, f"OUT={out}", f"MONOCYPHER={monocypher}",
                           f"{out}/dpu_apply_monocypher"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_the_recipe_verifier_agrees_with_openssl_but_for_torsion(builds):
    cases = ed25519_cases.cases(int(os.environ.get("DPU_ED25519_CASES", "10000")))
    proc = subprocess.run([str(builds / "cases")], capture_output=True, text=True,
                          input="".join(f"{k.hex()} {m.hex()} {s.hex()}\n"
                                        for _, k, m, s in cases))
    assert proc.returncode == 0
    tally = ed25519_cases.check(cases, proc.stdout.split(), cofactored=True)
    # Every valid signature of an honest key verifies; the allowed differences occurred.
    assert tally["valid", True] > 0 and tally["valid", False] == 0
    assert tally["torsion_r", "cofactored"] > 0


def test_the_c_applier_with_the_recipe_verifier(builds, exported_run, tmp_path):
    """A signed chain applies; a forged signature, another key and every hostile
    signed case are refused as the OpenSSL build refuses them."""
    result, _ = exported_run
    files = [open(os.path.join(result.out_dir, f"round_{r:03d}", "model.tflite"), "rb").read()
             for r in range(len(result.rounds))]
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    signer = signing.load_signer(str(tmp_path / "k.pem"))
    binary = str(builds / "dpu_apply_monocypher")

    def apply(base, patch, key="k.pub", round_="0"):
        (tmp_path / "m").write_bytes(base)
        (tmp_path / "p").write_bytes(patch)
        if (tmp_path / "o").exists():
            os.unlink(tmp_path / "o")
        return subprocess.run([binary, "--public_key", str(tmp_path / key), "--round", round_,
                               str(tmp_path / "m"), str(tmp_path / "p"), str(tmp_path / "o")],
                              capture_output=True, text=True)
    for r in range(1, len(files)):
        proc = apply(files[r - 1], create_patch(files[r - 1], files[r], r, signer), round_=str(r - 1))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "o").read_bytes() == files[r]
    patch = bytearray(create_patch(files[0], files[1], 1, signer))
    patch[200] ^= 1   # in the signature; the checksum redone so that only it can refuse
    patch[-32:] = hashlib.sha256(bytes(patch[:-32])).digest()
    proc = apply(files[0], bytes(patch))
    assert proc.returncode == 2 and "signature is not valid" in proc.stderr
    assert not (tmp_path / "o").exists()
    for case in (c for c in hostile.cases() if c.signed):
        _, public = hostile.test_key()
        (tmp_path / "hostile.pub").write_bytes(public)
        proc = apply(hostile.tiny_model(), case.patch, key="hostile.pub")
        assert proc.returncode == 2 and case.c in proc.stderr, (case.name, proc.stderr)


def test_the_recipe_verifier_for_cortex_m4(monocypher, tmp_path):
    """Its code and stack on a Cortex-M4, as docs/microcontrollers.md states them."""
    from conftest import stack_depths  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel
    if not shutil.which("arm-none-eabi-gcc"):
        missing_tool("arm-none-eabi-gcc (apt: gcc-arm-none-eabi)")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-ffunction-sections",
             "-fdata-sections", "-fcallgraph-info=su", f"-I{monocypher}"]
    text = 0
    graphs = ""
    for source in (os.path.join(ED25519_DIR, "dpu_ed25519.c"),
                   os.path.join(monocypher, "monocypher.c")):
        obj = tmp_path / (os.path.basename(source) + ".o")
        subprocess.run(["arm-none-eabi-gcc", *flags, "-c", source, "-o", str(obj)], check=True,
                       cwd=tmp_path)
        graphs += (tmp_path / (os.path.basename(source) + ".ci")).read_text()
    # Link only what dpu_ed25519_verify reaches: a relocatable link with gc-sections.
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-r",
                    "-Wl,--gc-sections", "-Wl,-e,dpu_ed25519_verify",
                    "-Wl,--undefined=dpu_ed25519_verify", str(tmp_path / "dpu_ed25519.c.o"),
                    str(tmp_path / "monocypher.c.o"), "-o", str(tmp_path / "verify.o")],
                   check=True)
    sizes = subprocess.run(["arm-none-eabi-size", str(tmp_path / "verify.o")],
                           capture_output=True, text=True, check=True).stdout
    text = int(sizes.splitlines()[1].split()[0])
    stack = stack_depths(graphs)("dpu_ed25519_verify")
    # The example firmware with the whole update path (applier and verifier)
    # against the same firmware without it.
    from test_microcontroller import ARM, FLAGS, _text  # pylint: disable=import-outside-toplevel
    subprocess.run(["make", "-s", "-C", C_DIR, "lib", f"CROSS={ARM}", f"OUT={tmp_path}"],
                   check=True)
    example = os.path.join(C_DIR, "examples", "firmware.c")
    link = ["--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections", f"-I{C_DIR}",
            f"-I{monocypher}", f"-I{ED25519_DIR}"]
    subprocess.run([ARM + "gcc", *FLAGS, "-DWITH_MONOCYPHER", *link, example,
                    os.path.join(ED25519_DIR, "dpu_ed25519.c"), str(tmp_path / "monocypher.c.o"),
                    str(tmp_path / "libdpu_patch.a"), "-o", str(tmp_path / "full.elf")],
                   check=True)
    subprocess.run([ARM + "gcc", *FLAGS, "-DWITHOUT_APPLIER", *link, example,
                    "-o", str(tmp_path / "bare.elf")], check=True)
    whole = _text(tmp_path / "full.elf") - _text(tmp_path / "bare.elf")
    print(f"recipe verifier on Cortex-M4: code {text} B, stack {stack} B; "
          f"the example firmware's update path, applier and verifier: {whole} B")
    doc = open(os.path.join(ROOT, "docs", "microcontrollers.md")).read()
    stated_code, stated_stack = (int(n) for n in re.search(
        r"verifier: (\d+) bytes of code and constants, (\d+) bytes of stack", doc).groups())
    stated_whole = int(re.search(r"applier and verifier together: (\d+) bytes", doc).group(1))
    assert abs(text - stated_code) <= 0.1 * stated_code, text
    assert abs(stack - stated_stack) <= 0.1 * stated_stack, stack
    assert abs(whole - stated_whole) <= 0.1 * stated_whole, whole
