"""The C applier as a microcontroller library: built with the cross compiler,
linked into a firmware, and held to the code size, state and stack that
dpu_patch.h states for a Cortex-M4 (within 10 %, so that a regression or an
improvement both show up as a stale figure)."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import C_DIR, missing_tool, stack_depths

ARM = "arm-none-eabi-"
FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror",
         "-pedantic"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    if not shutil.which(ARM + "gcc"):
        missing_tool("arm-none-eabi-gcc (apt: gcc-arm-none-eabi, libnewlib-arm-none-eabi)")
    out = tmp_path_factory.mktemp("m4")
    proc = subprocess.run(["make", "-C", C_DIR, "lib", f"CROSS={ARM}", f"OUT={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-mcpu=cortex-m4" in proc.stdout and "-Werror" in proc.stdout
    return out


def _stated():
    with open(os.path.join(C_DIR, "dpu_patch.h")) as f:
        text = f.read().replace("\n *", "")
    found = re.search(r"Cortex-M4 .*?: (\d+) bytes of code and constants, (\d+) bytes of "
                      r"state .*?at most (\d+) bytes of stack \(measured: (\d+)\)", text)
    return [int(n) for n in found.groups()]


def _text(elf):
    out = subprocess.run([ARM + "size", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.splitlines()[1].split()[0])


def measure(library, folder):
    """(code bytes the applier adds to the example firmware, state bytes, stack bytes)."""
    example = os.path.join(C_DIR, "examples", "firmware.c")
    link = ["--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections", f"-I{C_DIR}"]
    elves = {}
    for variant, extra in (("with", []), ("without", ["-DWITHOUT_APPLIER"])):
        elves[variant] = folder / f"{variant}.elf"
        subprocess.run([ARM + "gcc", *FLAGS, *extra, *link, example,
                        str(library / "libdpu_patch.a"), "-o", str(elves[variant])], check=True)
    code = _text(elves["with"]) - _text(elves["without"])
    symbols = subprocess.run([ARM + "nm", "-S", str(elves["with"])], capture_output=True,
                             text=True, check=True).stdout
    state = int(re.search(r"^\w+ (\w+) b applier$", symbols, re.M).group(1), 16)
    subprocess.run([ARM + "gcc", *FLAGS, "-fcallgraph-info=su", "-c",
                    os.path.join(C_DIR, "dpu_patch.c"), "-o", str(folder / "dpu_patch.o")],
                   check=True, cwd=folder)
    deepest = stack_depths((folder / "dpu_patch.ci").read_text())
    stack = max(deepest(entry) for entry in ("dpu_apply", "dpu_apply_in_place",
                                             "dpu_apply_in_sectors", "dpu_check_public_key"))
    return code, state, stack


def test_the_cortex_m4_library_stays_within_its_stated_code_state_and_stack(library,
                                                                            tmp_path):
    code, state, stack = measure(library, tmp_path)
    print(f"Cortex-M4: code {code} B, state {state} B, stack {stack} B")
    stated_code, stated_state, stack_limit, stated_stack = _stated()
    assert code <= stated_code * 1.02 and code >= stated_code * 0.9, code
    assert state == stated_state
    assert stack <= stack_limit and abs(stack - stated_stack) <= 0.1 * stated_stack, stack


def test_the_library_needs_no_libc_beyond_string_h(library):
    """What the object file leaves undefined: memcpy, memset, memcmp, strlen and
    the compiler's own helpers (libgcc), nothing that allocates or does I/O."""
    undefined = subprocess.run([ARM + "nm", "-u", str(library / "dpu_patch.o")],
                               capture_output=True, text=True, check=True).stdout.split()
    names = {u for u in undefined if u != "U"}
    assert names <= {"memcpy", "memset", "memcmp", "strlen"} | {
        n for n in names if n.startswith("__aeabi_") or n.startswith("__gnu_")}, names
    assert not {"malloc", "free", "printf", "calloc"} & names
