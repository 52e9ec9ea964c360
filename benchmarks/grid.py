"""Every method of the reference on every offline data set: accuracy gaps and real bytes.

    python -m benchmarks.grid --quick --out=benchmarks/results/grid_quick     # under 15 minutes
    python -m benchmarks.grid --out=benchmarks/results/grid                   # the full grid (hours)
    python -m benchmarks.grid --epochs=10 --out=benchmarks/results/grid_e10   # all of it, 10 epochs per step

For each setting (data set, model), method, update ratio k and seed, runs the
reference protocol's shape (partial round 0, 8 rounds) and records the test
accuracy per round and the bytes that really crossed the link: the whole
`.tflite` in round 0 and the patch files after (FU sends the whole file every
round). Every method trains under one protocol: the partial methods export
int8 files but train without the int8 bounds (`int8_bounds=False`), as FU
does, so the accuracies compare methods and nothing else; elements beyond
round 0's int8 range are clipped in the files (the share is reported). The
tables refuse runs whose settings differ beyond method, ratio and seed. Writes `<out>.json`, `<out>.md` (the round-averaged
difference to FU same_init, mean ± sd over seeds, beside the reference's
figures where they exist, and bytes against sending the whole model each
round) and `<out>_<setting>.png` (accuracy per round per method; cumulative
bytes per round).
"""

import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.tables import check_one_protocol, mean_sd, write_results

from tf_dpu import RunConfig
from tf_dpu.data import load_dataset

SETTINGS = {
    # name: (dataset, model, initial samples, samples per round)
    "mnist-mlp": ("mnist", "mlp", 500, 500),
    "mnist1d-mlp": ("mnist1d", "mlp", 500, 500),
    "mnist1d-cnn": ("mnist1d", "cnn", 500, 500),
    "digits-mlp": ("digits", "mlp", 200, 150),
}
METHODS = ("fu", "fu_last_round", "dpu", "gcpu", "lcpu", "rpu", "pruning")
RATIOS = (0.005, 0.01, 0.05, 0.1)
QUICK = {"settings": ("mnist-mlp", "mnist1d-cnn"), "ratios": (0.01,), "epochs": 10}
# The reference code on mnist-mlp with this protocol, by epochs per step
# (shared docs: 30 epochs for the table, 10 epochs for DPU and RPU at k = 1 %).
REFERENCE = {
    30: {("mnist-mlp", 0.01): {"dpu": -2.18, "gcpu": -2.30, "rpu": -5.72, "pruning": -7.05},
         ("mnist-mlp", 0.005): {"dpu": -4.76, "gcpu": -5.21, "rpu": -10.00, "pruning": -23.69}},
    10: {("mnist-mlp", 0.01): {"dpu": -5.61, "rpu": -12.79}},
}

_QUICK = flags.DEFINE_bool("quick", False, "a meaningful subset: 2 settings, k = 0.01, 10 epochs")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds")
_EPOCHS = flags.DEFINE_integer("epochs", None, "epochs per step (default: 10 with --quick, "
                               "30 otherwise)")
_OUT = flags.DEFINE_string("out", "benchmarks/results/grid", "output path without extension")


def jobs(quick: bool, seeds):
    settings = QUICK["settings"] if quick else tuple(SETTINGS)
    ratios = QUICK["ratios"] if quick else RATIOS
    for setting in settings:
        for seed in seeds:
            yield setting, "fu", None, seed
            yield setting, "fu_last_round", None, seed
            for k in ratios:
                for method in METHODS[2:]:
                    yield setting, method, k, seed


def run_one(setting, method, ratio, seed, epochs, data):
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    dataset, model, initial, per_round = SETTINGS[setting]
    partial = method not in ("fu", "fu_last_round")
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(
            dataset=dataset, model=model, rounds=8, initial_samples=initial,
            samples_per_round=per_round, epochs=epochs, seed=seed,
            method="fu" if not partial else method,
            fu_init="last_round" if method == "fu_last_round" else "same_init",
            update_ratio=ratio or 0.01, initial_deployment="partial", initializer="torch",
            export_tflite=partial, int8_bounds=False, out_dir=folder if partial else None)
        started = time.time()
        result = run(config, progress=None, data=data)
    rounds = result.rounds
    return {"setting": setting, "method": method, "ratio": ratio, "seed": seed,
            "config": result.config, "seconds": round(time.time() - started, 2),
            "clipped_fraction": [r.get("clipped_fraction", 0.0) for r in rounds],
            "test_accuracy": [r["test_accuracy"] for r in rounds],
            "sent_bytes": [r.get("sent_bytes") for r in rounds],
            "tflite_bytes": rounds[0].get("tflite_bytes"),
            "updated_elements": [r["updated_elements"] for r in rounds]}


def _gap(runs, setting, method, ratio):
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        fu = [r for r in runs if (r["setting"], r["method"], r["seed"]) == (setting, "fu", seed)]
        other = [r for r in runs if (r["setting"], r["method"], r["ratio"], r["seed"]) ==
                 (setting, method, ratio, seed)]
        if fu and other:
            out.append(100 * float(np.mean(np.subtract(other[0]["test_accuracy"],
                                                       fu[0]["test_accuracy"]))))
    return out


def _model_bytes(runs, setting):
    sizes = [r["tflite_bytes"] for r in runs if r["setting"] == setting and r["tflite_bytes"]]
    return sizes[0] if sizes else None


def _bytes(runs, setting, method, ratio):
    """Mean over seeds of the total bytes sent over all rounds."""
    if method.startswith("fu"):
        size = _model_bytes(runs, setting)
        return None if size is None else 8 * size
    totals = [sum(b or 0 for b in r["sent_bytes"]) for r in runs
              if (r["setting"], r["method"], r["ratio"]) == (setting, method, ratio)]
    return float(np.mean(totals)) if totals else None


def markdown(runs, epochs: int) -> str:
    reference = REFERENCE.get(epochs, {})
    lines = [f"{epochs} epochs per step, partial round 0, PyTorch-style initialization, every "
             "method trained without int8 bounds (float accuracy, one protocol); 'ref.' is "
             "the reference code on the same protocol. Bytes: the whole int8 file in round 0, "
             "the patches after (FU: the whole file every round).", ""]
    for setting in dict.fromkeys(r["setting"] for r in runs):
        check_one_protocol(r["config"] for r in runs if r["setting"] == setting and "config" in r)
        clipped = [c for r in runs if r["setting"] == setting
                   for c in r.get("clipped_fraction", [])[1:] if c]
        ratios = sorted({r["ratio"] for r in runs if r["setting"] == setting and r["ratio"]})
        size = _model_bytes(runs, setting)
        fu_mean = 100 * np.mean([np.mean(r["test_accuracy"]) for r in runs
                                 if (r["setting"], r["method"]) == (setting, "fu")])
        lines += [f"#### {setting}: average over rounds 0-7 of (method - FU same_init), "
                  f"points; FU averages {fu_mean:.2f} %; the int8 model is {size:,} bytes", "",
                  "| method | " + " | ".join(f"k = {k:g}" for k in ratios)
                  + " | bytes sent, 8 rounds" + (f" (k = {ratios[0]:g})" if ratios else "")
                  + " | vs whole model each round |",
                  "|---|" + "---|" * len(ratios) + "---|---|"]
        for method in METHODS:
            if method.startswith("fu"):
                gap = ("0 (reference)" if method == "fu"
                       else mean_sd(_gap(runs, setting, method, None)))
                cells = [gap] * len(ratios)
                sent = _bytes(runs, setting, method, None)
            else:
                cells = []
                for k in ratios:
                    ref = reference.get((setting, k), {}).get(method)
                    cells.append(mean_sd(_gap(runs, setting, method, k))
                                 + (f" (ref. {ref:+.2f})" if ref is not None else ""))
                sent = _bytes(runs, setting, method, ratios[0]) if ratios else None
            whole = 8 * size if size else None
            lines.append(f"| {method} | " + " | ".join(cells) + f" | "
                         f"{'n/a' if sent is None else f'{sent:,.0f}'} | "
                         f"{'n/a' if not sent or not whole else f'{sent / whole:.3f}'} |")
        if clipped:
            lines.append(f"\nClipped in the int8 files (share of a round's changed elements "
                         f"beyond round 0's range): at most {100 * max(clipped):.2f} %.")
        lines.append("")
    return "\n".join(lines)


def plot(runs, setting, path):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
    ratio = min({r["ratio"] for r in runs if r["setting"] == setting and r["ratio"]},
                key=lambda k: abs(k - 0.01))
    fig, (acc, sent) = plt.subplots(1, 2, figsize=(11, 4))
    size = _model_bytes(runs, setting)
    for method in METHODS:
        chosen = [r for r in runs if r["setting"] == setting and r["method"] == method
                  and r["ratio"] in (None, ratio)]
        if not chosen:
            continue
        curve = 100 * np.mean([r["test_accuracy"] for r in chosen], axis=0)
        acc.plot(range(len(curve)), curve, marker="o", label=method)
        if method == "fu":
            bytes_per_round = [size] * len(curve)
        elif method == "fu_last_round":
            continue
        else:
            bytes_per_round = np.mean([[b or 0 for b in r["sent_bytes"]] for r in chosen], axis=0)
        sent.plot(range(len(curve)), np.cumsum(bytes_per_round) / 1e3, marker="o",
                  label="fu (whole model)" if method == "fu" else method)
    acc.set(xlabel="round", ylabel="test accuracy (%)", title=f"{setting}, k = {ratio:g}")
    sent.set(xlabel="round", ylabel="cumulative kB sent", yscale="log",
             title="bytes over the link (int8 patches)")
    for ax in (acc, sent):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv):
    del argv
    quick = _QUICK.value
    epochs = _EPOCHS.value or (QUICK["epochs"] if quick else 30)
    seeds = [int(s) for s in _SEEDS.value]
    cache = {}
    todo = list(jobs(quick, seeds))
    runs = []
    for i, (setting, method, ratio, seed) in enumerate(todo):
        dataset = SETTINGS[setting][0]
        if (dataset, seed) not in cache:
            cache[(dataset, seed)] = load_dataset(dataset, 300, seed)
        runs.append(run_one(setting, method, ratio, seed, epochs, cache[(dataset, seed)]))
        print(f"[{i + 1}/{len(todo)}] {setting} {method} k={ratio} seed={seed}: mean test "
              f"{100 * np.mean(runs[-1]['test_accuracy']):.2f} % ({runs[-1]['seconds']:.1f} s)",
              flush=True)
    table = markdown(runs, epochs)
    write_results(_OUT.value, {"quick": quick, "epochs": epochs, "runs": runs}, table)
    for setting in dict.fromkeys(r["setting"] for r in runs):
        plot(runs, setting, f"{_OUT.value}_{setting}.png")
    print(table)


if __name__ == "__main__":
    app.run(main)
