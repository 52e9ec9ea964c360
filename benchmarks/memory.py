"""Peak memory of creating and applying a patch on a 10M-parameter int8 model.

    python -m benchmarks.memory --out=benchmarks/results/memory

Converts a 10M-parameter MLP to int8, moves 1 % of its kernel elements, and
measures each operation in a fresh process, side by side:

* streamed from files: `create_patch_files` and `apply_patch_file` (what the
  command lines use), and the C applier's host driver;
* in memory: `create_patch` and `apply_patch` on bytes, for comparison.

Memory is the process's peak resident set (VmHWM) above its resident set
after the imports, and tracemalloc's peak of Python and numpy allocations;
for the C driver, the whole process's peak resident set from GNU time. Writes `<out>.json` and `<out>.md`.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from benchmarks import jvm
from benchmarks.scaling import WIDTHS, _model

# A 100M-parameter MLP as well, to show what grows with the model.
_WIDTHS = dict(WIDTHS, **{"100M": 9800})
_SIZE = flags.DEFINE_string("size", "10M", "model size: " + ", ".join(_WIDTHS))
_RATIO = flags.DEFINE_float("ratio", 0.01, "fraction of kernel elements that change")
_OUT = flags.DEFINE_string("out", "benchmarks/results/memory", "output path, no extension")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each measurement runs this program: import, note the resident set, run one
# operation under tracemalloc, report the peaks.
_PROBE = """
import json, sys, tracemalloc
sys.path.insert(0, {root!r})
from tflite_edge.apply import apply_patch, apply_patch_file
from tflite_edge.create import create_patch, create_patch_files
# The FlatBuffers schema module is a one-time import of a few MB of code,
# not memory per model: load it before measuring.
from ai_edge_litert import schema_py_generated
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
base, target, patch, out = {paths!r}
def read(p):
    with open(p, "rb") as f:
        return f.read()
before = rss("VmRSS:")
tracemalloc.start()
{operation}
heap = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"rss_kb": rss("VmHWM:") - before, "heap_kb": heap // 1024}}))
"""

OPERATIONS = {
    "create, streamed from files": "create_patch_files(base, target, 1)",
    "create, in memory": "create_patch(read(base), read(target), 1)",
    "apply, streamed from files": "apply_patch_file(base, patch, out, state_path=None, allow_unsigned=True)",
    "apply, in memory": "apply_patch(read(base), read(patch), allow_unsigned=True)",
}
# (The JVM and C rows are measured by their own processes; see main.)


def _probe(operation: str, paths) -> dict:
    code = _PROBE.format(root=_ROOT, paths=paths, operation=operation)
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _c_peak(paths, build: str) -> dict:
    """Peak RSS of the C driver, from GNU time (a process's own counter would
    include the Python parent it was forked from)."""
    if not os.path.exists("/usr/bin/time"):
        return {"rss_kb": None, "heap_kb": None}
    subprocess.run(["make", "-s", "-C", os.path.join(_ROOT, "tflite_edge", "c"), f"OUT={build}"],
                   check=True)
    base, _, patch, out = paths
    done = subprocess.run(["/usr/bin/time", "-f", "%M", os.path.join(build, "dpu_apply"), "--allow_unsigned", base,
                           patch, out], check=True, capture_output=True, text=True)
    return {"rss_kb": int(done.stderr.split()[-1]), "heap_kb": None}


def main(argv):
    del argv
    from tflite_edge.convert import build_map, convert_int8, requantize  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch_files  # pylint: disable=import-outside-toplevel
    from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(0)
    model = _model(_WIDTHS[_SIZE.value])
    base = convert_int8(model, rng.randn(20, 256).astype(np.float32))
    mapping = build_map(model, ModelFile(base))
    old = model.get_weights()
    new = [w.copy() for w in old]
    for entry in mapping:
        w = new[entry.kernel_index]
        chosen = rng.rand(*w.shape) < _RATIO.value
        w[chosen] += (rng.randint(-4, 5, w.shape) * entry.kernel_tensor.scales)[chosen]
    target, _ = requantize(base, mapping, new, old)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = tuple(os.path.join(folder, n) for n in ("base", "target", "patch", "out"))
        for path, data in zip(paths, (base, target)):
            with open(path, "wb") as f:
                f.write(data)
        patch = create_patch_files(paths[0], paths[1], 1)
        with open(paths[2], "wb") as f:
            f.write(patch)
        for name, operation in OPERATIONS.items():
            rows[name] = _probe(operation, paths)
            print(name, rows[name], flush=True)
        rows["apply, C applier (host driver)"] = _c_peak(paths, folder)
        jar = jvm.build()
        if jar:
            java = jvm.bench(jar, paths[0], paths[2], 3, time_command=True)
            rows["apply, JVM applier"] = {"rss_kb": java["rss_kb"],
                                          "heap_kb": java["peak_heap_bytes"] // 1024,
                                          "smallest_xmx_mb": jvm.smallest_heap(jar, paths[0],
                                                                              paths[2])}
        with open(paths[3], "rb") as f:
            assert f.read() == target
    result = {"parameters": model.count_params(), "model_bytes": len(base),
              "patch_bytes": len(patch), "ratio": _RATIO.value, "peaks": rows}
    mb = len(base) / 2 ** 20
    lines = [f"{result['parameters']:,} parameters, int8 file {len(base):,} bytes "
             f"({mb:.1f} MiB), k = {_RATIO.value:g}, patch {len(patch):,} bytes.\n",
             "| operation | peak RSS above start | / model size | heap peak |",
             "|---|---:|---:|---:|"]
    for name, r in rows.items():
        if r["rss_kb"] is None:
            continue
        heap = "" if r["heap_kb"] is None else f"{r['heap_kb'] / 1024:.1f} MiB"
        lines.append(f"| {name} | {r['rss_kb'] / 1024:.1f} MiB | "
                     f"{r['rss_kb'] / 1024 / mb:.2f} | {heap} |")
    lines.append("\nPython rows: peak resident set above the process after its imports; "
                 "heap: tracemalloc's peak. C row: the whole process's peak resident set (GNU "
                 "time). JVM row: the whole JVM's peak resident set (GNU time, the runtime "
                 "included); heap: the peak heap in use, sampled every millisecond "
                 "(garbage not yet collected included)"
                 + (f"; it applies the patch with -Xmx{rows['apply, JVM applier']['smallest_xmx_mb']}m, "
                    "less than the model" if "apply, JVM applier" in rows else "") + ".")
    table = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(_OUT.value + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
