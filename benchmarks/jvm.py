"""The JVM applier in the benchmarks: build the jar offline, time an apply, measure its heap."""

import json
import os
import shutil
import subprocess
from typing import Optional

_ANDROID = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tflite_edge", "android")
JAR = os.path.join(_ANDROID, "build", "dpu-patch.jar")


def build() -> Optional[str]:
    """Builds tflite_edge/android/build/dpu-patch.jar (`make android`); None without a JDK."""
    if not (shutil.which("mvn") and shutil.which("java")):
        return None
    subprocess.run(["mvn", "-o", "-q", "-f", os.path.join(_ANDROID, "pom.xml"), "package",
                    "-DskipTests"], check=True, capture_output=True, text=True)
    return JAR


def bench(jar: str, base: str, patch: str, repeats: int, max_heap_mb: Optional[int] = None,
          time_command: bool = False) -> dict:
    """Seconds per apply (file to file, after a warm-up) and the sampled peak heap.

    With `max_heap_mb`, the JVM runs with -Xmx of that size (a run that does
    not fit fails); with `time_command`, GNU time adds the process's peak RSS.
    """
    command = ["java"] + ([f"-Xmx{max_heap_mb}m"] if max_heap_mb else []) + [
        "-jar", jar, "bench", f"--base={base}", f"--patch={patch}", f"--repeats={repeats}"]
    if time_command:
        command = ["/usr/bin/time", "-f", "%M"] + command
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"ok": False, "error": (done.stderr.strip().splitlines() or [""])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["ok"] = True
    if time_command:
        result["rss_kb"] = int(done.stderr.split()[-1])
    return result


def smallest_heap(jar: str, base: str, patch: str, sizes=(4, 8, 16, 32, 64, 128, 256)):
    """The smallest -Xmx (MB) of `sizes` with which the JVM applies the patch."""
    for size in sizes:
        if bench(jar, base, patch, 1, max_heap_mb=size)["ok"]:
            return size
    return None
