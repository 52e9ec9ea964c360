"""Patch size and apply time as the model and the update ratio grow.

MLPs of 10k to 10M parameters are converted to int8; for each ratio k a
random k-fraction of the kernel elements moves by a few quantization steps,
is re-quantized under the frozen scales, and the patch between the two files
is created and applied with both appliers.
"""

import os
import subprocess
import tempfile
import time

import numpy as np

from benchmarks import jvm
from tflite_edge import patch_format
from tflite_edge.apply import apply_patch
from tflite_edge.convert import build_map, convert_int8, requantize
from tflite_edge.create import create_patch
from tflite_edge.model_file import ModelFile

# hidden width -> about 10k, 130k, 1M, 10M parameters (256 inputs, two hidden layers)
WIDTHS = {"10k": 32, "100k": 256, "1M": 900, "10M": 3000}
_C_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tflite_edge", "c")


def _model(width: int, seed: int = 0):
    import tf_keras as keras  # pylint: disable=import-outside-toplevel

    # Every layer draws its own weights: two layers of one shape from one
    # seed would hold identical tensors, which the converter stores once
    # (and which a patch could then never change apart).
    def dense(units, index, **kwargs):
        return keras.layers.Dense(
            units, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + index),
            bias_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=seed + 10 + index),
            **kwargs)

    inputs = keras.Input((256,))
    x = dense(width, 0, activation="relu")(inputs)
    x = dense(width, 1, activation="relu")(x)
    return keras.Model(inputs, dense(10, 2)(x))


def _c_and_jvm_seconds(binary, jar, base, patch, repeats):
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, n) for n in ("base", "patch", "out")]
        for path, data in zip(paths, (base, patch)):
            with open(path, "wb") as f:
                f.write(data)
        c = float(subprocess.run([binary, "--allow_unsigned", "--bench", str(repeats), *paths],
                                 check=True,
                                 capture_output=True, text=True).stdout)
        java = jvm.bench(jar, paths[0], paths[1], repeats)["seconds"] if jar else None
        return c, java


def measure(sizes=("10k", "100k", "1M", "10M"), ratios=(0.001, 0.01, 0.1)) -> list:
    rng = np.random.RandomState(0)
    rows = []
    with tempfile.TemporaryDirectory() as build:
        subprocess.run(["make", "-s", "-C", _C_DIR, f"OUT={build}"], check=True)
        binary = os.path.join(build, "dpu_apply")
        jar = jvm.build()
        for size in sizes:
            model = _model(WIDTHS[size])
            params = model.count_params()
            base = convert_int8(model, rng.randn(20, 256).astype(np.float32))
            mapping = build_map(model, ModelFile(base))
            old = model.get_weights()
            for k in ratios:
                new = [w.copy() for w in old]
                for entry in mapping:
                    w = new[entry.kernel_index]
                    chosen = rng.rand(*w.shape) < k
                    step = entry.kernel_tensor.scales  # one int8 step per output channel
                    w[chosen] += (rng.randint(-4, 5, w.shape) * step)[chosen]
                target, _ = requantize(base, mapping, new, old)
                started = time.perf_counter()
                patch = create_patch(base, target, 1)
                create_s = time.perf_counter() - started
                repeats = max(1, int(2e6 // len(base)))
                started = time.perf_counter()
                for _ in range(repeats):
                    apply_patch(base, patch, allow_unsigned=True)
                python_s = (time.perf_counter() - started) / repeats
                c_s, jvm_s = _c_and_jvm_seconds(binary, jar, base, patch, repeats)
                changed = sum(len(r.positions)
                              for r in patch_format.decode(patch, base).records)
                rows.append({"model": size, "parameters": params, "ratio": k,
                             "model_bytes": len(base), "patch_bytes": len(patch),
                             "patch_fraction": round(len(patch) / len(base), 5),
                             "bytes_per_change": round(len(patch) / max(1, changed), 3),
                             "create_s": round(create_s, 4), "apply_python_s": round(python_s, 5),
                             "apply_c_s": round(c_s, 5),
                             "apply_jvm_s": round(jvm_s, 5) if jvm_s else None})
    return rows


def markdown(rows) -> str:
    lines = ["| model | parameters | k | .tflite | patch | patch / file | bytes per change | "
             "create | apply (Python) | apply (C) | apply (JVM) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        java = f"{r['apply_jvm_s'] * 1e3:.1f} ms" if r.get("apply_jvm_s") else "-"
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['ratio']:g} | "
                     f"{r['model_bytes']:,} | {r['patch_bytes']:,} | {r['patch_fraction']:.4f} | "
                     f"{r['bytes_per_change']:.2f} | {r['create_s'] * 1e3:.1f} ms | "
                     f"{r['apply_python_s'] * 1e3:.1f} ms | {r['apply_c_s'] * 1e3:.1f} ms | "
                     f"{java} |")
    return "\n".join(lines) + "\n"
