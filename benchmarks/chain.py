"""Replaying a run's patch chain with the Python, C and JVM appliers (for the benchmarks)."""

import os
import subprocess
import tempfile
from typing import Optional


def reproduce_chain(out_dir: str, rounds: int, c_applier: str, jar: Optional[str]) -> dict:
    """Applies every round's patch of a run with each applier, as a device would.

    Args:
      out_dir: a run folder written with `--export_tflite`.
      rounds: how many `round_NNN` folders it has.
      c_applier: the C host driver (`make -C tflite_edge/c`).
      jar: the JVM applier's jar, or None where there is no JDK.

    Returns:
      Per applier (python, c, jvm): True when it rebuilt every round's file
      byte for byte (the JVM False when it did not run).
    """
    from tflite_edge.apply import apply_patch  # pylint: disable=import-outside-toplevel
    files = [open(os.path.join(out_dir, f"round_{r:03d}", "model.tflite"), "rb").read()
             for r in range(rounds)]
    ok = {"python": True, "c": True, "jvm": bool(jar)}
    device = {name: files[0] for name in ok}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(1, rounds):
            patch = os.path.join(out_dir, f"round_{r:03d}", "update.patch")
            if os.path.exists(patch):
                data = open(patch, "rb").read()
                device["python"] = apply_patch(device["python"], data, allow_unsigned=True)
                for name, command in (("c", [c_applier, "--allow_unsigned"]),
                                      ("jvm", ["java", "-jar", jar, "apply", "--no_state",
                                               "--allow_unsigned"])):
                    if not ok[name]:
                        continue
                    base, out = os.path.join(scratch, "base"), os.path.join(scratch, "out")
                    with open(base, "wb") as f:
                        f.write(device[name])
                    if name == "c":
                        argv = command + [base, patch, out]
                    else:
                        argv = command + [f"--base={base}", f"--patch={patch}", f"--out={out}"]
                    subprocess.run(argv, check=True, capture_output=True)
                    device[name] = open(out, "rb").read()
            for name in ok:
                ok[name] = ok[name] and device[name] == files[r]
    return ok
