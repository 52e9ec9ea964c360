"""What users pay for: the device's accuracy against the bytes that crossed the link.

    python -m benchmarks.bytes --out=benchmarks/results/bytes          # about 100 minutes, 2 cores
    python -m benchmarks.bytes --quick --out=/tmp/bytes_quick           # MNIST MLP, 2 seeds
    python -m benchmarks.bytes --modes=stc --merge                      # add modes' runs

For each setting (bundled MNIST with the MLP and the CNN, MNIST-1D, digits),
seeds 1-3, product defaults (full round 0, no restarts, 8 rounds, 10 epochs
per step, Adam under the `thirds` schedule): FU from the same
initialization and warm-started from the last round (the whole int8 file
every round), the warm-started FU sent as its int8 delta (real patches;
the "send everything, coded" baseline), sparse ternary compression of that
full update (`--method=stc`, k = 2 ... 20 %), DPU at fixed k = 0.25 ... 20 %,
DPU with step 2 held to ternary values (`--value_grid=ternary`,
k = 1 ... 10 %), RPU at 1 %, DPU with `--rank=per_bit` at 1 %, and
`--target_gap` at 0.5 (also judged on held-out validation samples, with
`--target_confidence=1`, and with one fine-tuning per round,
`--target_search_steps=1`) and 1 point. Partial methods export int8 files
and send real patches (training inside the int8 range, as deployed); FU is
the server's float model and its whole file each round. Writes
`<out>.json`, `<out>.md` (per method: bytes over rounds 1-7 and the gap to
the better FU over rounds 1-7, mean ± standard error over seeds) and
`<out>_<setting>.png` (accuracy against cumulative kilobytes).

Keys: `bytes_target_vs_fixed_k` = bytes of `--target_gap=0.5` over the
bytes of the cheapest fixed-k DPU whose gap is the same or smaller (means
over seeds and settings); `target_gap_test_points` = the gap
`--target_gap=0.5` achieved on test; `target_holds_on_test` = per target
mode, the share of rounds 1-7 whose model is within G points of the round's
own full update on test; `product_vs_baselines_at_1_point` = per setting,
the product's cheapest mode within 1 point of the better FU over the FU
delta patch and over the cheapest STC within 1 point.
"""

import json
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.bytes_figures import (FU_DELTA, FU_NAMES, STC_PREFIX, TARGET, accuracy,
                                     gaps_and_bytes, key_figures, pareto)
from benchmarks.tables import check_one_protocol, mean_se, write_results

from tf_dpu import RunConfig
from tf_dpu.data import load_dataset

SETTINGS = {
    "mnist-mlp": ("mnist", "mlp", 500, 500),
    "mnist-cnn": ("mnist", "cnn", 500, 500),
    "mnist1d-mlp": ("mnist1d", "mlp", 500, 500),
    "digits-mlp": ("digits", "mlp", 200, 150),
}
RATIOS = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
# Sparse ternary compression sends no fine-tuned values, so it needs more
# elements than DPU for the same accuracy: its ratios start higher.
STC_RATIOS = (0.02, 0.05, 0.1, 0.2)
# DPU with step 2 held to ternary values (`--value_grid=ternary`).
TERNARY_RATIOS = (0.01, 0.02, 0.05, 0.1)
QUICK = {"settings": ("mnist-mlp",), "seeds": (1, 2), "ratios": (0.005, 0.01, 0.02, 0.05, 0.1,
                                                                 0.2), "stc_ratios": (0.05,)}
# name: RunConfig changes (FU modes, fixed ratios and the new modes).
# FU is re-converted and shipped whole every round: it trains without the
# int8 bounds of round 0's file (its export only gives the file's size).
FU_MODES = {name: dict(method="fu", fu_init=name.split()[1], int8_bounds=False)
            for name in FU_NAMES}
NEW_MODES = {"dpu per_bit k=1%": dict(method="dpu", rank="per_bit", update_ratio=0.01),
             "rpu k=1%": dict(method="rpu", update_ratio=0.01),
             TARGET: dict(method="dpu", target_gap=0.5),
             # The same target judged on held-out validation samples, and with
             # one standard error of margin: which keeps it on test.
             "target 0.5 judged": dict(method="dpu", target_gap=0.5, target_judge_share=0.5),
             "target 0.5 z=1": dict(method="dpu", target_gap=0.5, target_confidence=1.0),
             # One fine-tuning per round instead of up to three: the server
             # time a search costs against what it buys.
             "target 0.5 search=1": dict(method="dpu", target_gap=0.5, target_search_steps=1),
             "target 1.0": dict(method="dpu", target_gap=1.0)}

def modes(quick: bool, ratios=None, only=None):
    """Mode name -> RunConfig changes (`only`: the modes whose names start so)."""
    out = dict(FU_MODES)
    out[FU_DELTA] = dict(method="fu", fu_init="last_round")
    for k in ratios or (QUICK["ratios"] if quick else RATIOS):
        out[f"dpu k={100 * k:g}%"] = dict(method="dpu", update_ratio=k)
    for k in QUICK["stc_ratios"] if quick else STC_RATIOS:
        out[f"{STC_PREFIX}{100 * k:g}%"] = dict(method="stc", update_ratio=k)
    for k in () if quick else TERNARY_RATIOS:
        out[f"dpu ternary k={100 * k:g}%"] = dict(method="dpu", update_ratio=k,
                                                   value_grid="ternary")
    extra = ("target 0.5",) if quick else tuple(NEW_MODES)
    out.update({name: NEW_MODES[name] for name in extra})
    return {name: changes for name, changes in out.items()
            if not only or name.startswith(tuple(only))}


def run_one(setting: str, name: str, changes: dict, seed: int, data, epochs: int = 10) -> dict:
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    dataset, model, initial, per_round = SETTINGS[setting]
    fu = name in FU_NAMES
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(dataset=dataset, model=model, rounds=8, initial_samples=initial,
                           samples_per_round=per_round, epochs=epochs, seed=seed,
                           export_tflite=True, out_dir=folder, **changes)
        started = time.time()
        result = run(config, progress=None, data=data)
    rounds = result.rounds
    size = rounds[0]["tflite_bytes"]
    return {"setting": setting, "mode": name, "seed": seed, "config": result.config,
            "seconds": round(time.time() - started, 2),
            "test_accuracy": [r["test_accuracy"] for r in rounds],
            # --target_gap: each round's gap to its own full update, on test.
            "target_gap_test": [r.get("target_gap_test_points") for r in rounds],
            "device_accuracy": [r["tflite_test_accuracy"] for r in rounds],
            # FU ships a reconverted file every round, whatever changed.
            "sent_bytes": [size] * len(rounds) if fu else [r["sent_bytes"] for r in rounds],
            "tflite_bytes": size}


def markdown(runs) -> str:
    lines = ["Product defaults (full round 0, no restarts, 8 rounds, 10 epochs per step, Adam "
             "under the `thirds` schedule; a target's step 1 runs FU's 20); the "
             "device's test accuracy (partial methods: the int8 file in LiteRT, trained inside "
             "its range; FU: the server's float model, shipped whole each round); gap = mean "
             "over rounds 1-7 of (method - the better FU of the seed), bytes = rounds 1-7; "
             "mean ± standard error over seeds.", ""]
    for setting in dict.fromkeys(r["setting"] for r in runs):
        partial = [r["config"] for r in runs if r["setting"] == setting
                   and r["mode"] not in FU_NAMES]
        check_one_protocol(partial, varying=("method", "update_ratio", "contribution_mix",
                                             "reinit", "fu_init", "seed", "out_dir", "rank",
                                             "target_gap", "export_tflite", "int8_bounds",
                                             "target_judge_share", "target_confidence",
                                             "value_grid", "target_search_steps"))
        size = next(r["tflite_bytes"] for r in runs if r["setting"] == setting)
        lines += [f"#### {setting} (the int8 file: {size:,} bytes)", "",
                  "| method | bytes, rounds 1-7 | share of 7 whole files | gap to the better FU "
                  "(points) | server seconds per run |", "|---|---:|---:|---|---:|"]
        for mode in dict.fromkeys(r["mode"] for r in runs if r["setting"] == setting):
            values = gaps_and_bytes(runs, setting, mode)
            if not values:
                continue
            sent = [b for _, b in values]
            # Training, selection, search and export of the 8 rounds: what
            # the target's search costs the server beside a fixed k.
            seconds = np.mean([r["seconds"] for r in runs
                               if (r["setting"], r["mode"]) == (setting, mode)])
            lines.append(f"| {mode} | {np.mean(sent):,.0f} | {np.mean(sent) / (7 * size):.3f} "
                         f"| {mean_se([g for g, _ in values])} | {seconds:.0f} |")
        lines += ["", f"Cheapest within G points of the better FU ({setting}):", "",
                  "| G | mode | bytes, rounds 1-7 |", "|---:|---|---:|"]
        lines += [f"| {gap:g} | {mode} | {sent:,.0f} |" if mode else f"| {gap:g} | none | |"
                  for gap, (mode, sent) in pareto(runs, setting).items()]
        lines.append("")
    figures = key_figures(runs)
    lines.append(f"`bytes_target_vs_fixed_k` = {figures['bytes_target_vs_fixed_k']}, "
                 f"`target_gap_test_points` = {figures['target_gap_test_points']}.")
    lines += ["", "Within 1 point of the better FU on test: the product's cheapest mode "
              "(fixed k, per-bit ranking or a target) against the warm-started FU sent as its "
              "coded int8 delta and against the cheapest sparse ternary compression that gets "
              "there (bytes of rounds 1-7, means over seeds).", "",
              "| setting | product | bytes | FU delta patch | ratio | STC | bytes | ratio |",
              "|---|---|---:|---:|---:|---|---:|---:|"]
    number = lambda v: "n/a" if v is None else f"{v:,}"  # noqa: E731
    lines += [f"| {setting} | {f['product_mode']} | {f['product_bytes']:,} | "
              f"{number(f['fu_delta_bytes'])} | {number(f['vs_fu_delta'])} | "
              f"{f['stc_mode'] or 'none within 1 point'} | {number(f['stc_bytes'])} | "
              f"{number(f['vs_stc'])} |"
              for setting, f in figures["product_vs_baselines_at_1_point"].items()]
    lines += ["", "How often each target holds on test: rounds 1-7 whose device (the server's "
              "float model) is within G points of the round's own full update on test, over "
              "settings and seeds.", "", "| mode | rounds within G on test |", "|---|---:|"]
    lines += [f"| {mode} | {held:.0%} of {count} |"
              for mode, (held, count) in figures["target_holds_on_test"].items()]
    return "\n".join(lines) + "\n"


def plot(runs, setting, path):
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    fig = Figure(figsize=(7, 4.5))
    axes = fig.subplots()
    for mode in dict.fromkeys(r["mode"] for r in runs if r["setting"] == setting):
        chosen = [r for r in runs if (r["setting"], r["mode"]) == (setting, mode)]
        points = 100 * np.mean([accuracy(r) for r in chosen], axis=0)
        kilobytes = np.cumsum(np.mean([r["sent_bytes"] for r in chosen], axis=0)) / 1e3
        style = "--" if mode.startswith("fu") else ("-" if mode.startswith("target") else ":")
        axes.plot(kilobytes, points, style, marker="o", markersize=3, label=mode)
    axes.set(xscale="log", xlabel="cumulative kilobytes sent (round 0's whole file included)",
             ylabel="device test accuracy (%)", title=setting)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def default_settings(quick: bool) -> tuple:
    return QUICK["settings"] if quick else tuple(SETTINGS)


def measure(quick: bool, progress=print, ratios=None, settings=None, seeds=None,
            only=None) -> list:
    """Every run of the comparison (`ratios`, `settings`, `seeds`, `only` narrow it)."""
    settings = settings or default_settings(quick)
    seeds = seeds or (QUICK["seeds"] if quick else (1, 2, 3))
    runs = []
    for setting in settings:
        for seed in seeds:
            data = load_dataset(SETTINGS[setting][0], 300, seed)
            for name, changes in modes(quick, ratios, only).items():
                runs.append(run_one(setting, name, changes, seed, data))
                progress(f"{setting} {name} seed={seed}: mean device accuracy "
                         f"{100 * accuracy(runs[-1]).mean():.2f} %, "
                         f"{sum(runs[-1]['sent_bytes'][1:]):,} bytes after round 0 "
                         f"({runs[-1]['seconds']:.0f} s)")
    return runs


def main(argv):
    del argv
    quick, out = flags.FLAGS.quick, flags.FLAGS.out
    runs = []
    if flags.FLAGS.merge:
        # A new mode joins runs already measured (the protocol check in
        # `markdown` refuses runs that differ in anything but the mode).
        try:
            with open(f"{out}.json") as f:
                runs = json.load(f)["runs"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"--merge: cannot read the runs of {out}.json ({e})") from None
    seeds = [int(seed) for seed in flags.FLAGS.seeds] if flags.FLAGS.seeds else None
    if flags.FLAGS.modes and not modes(quick, only=flags.FLAGS.modes):
        raise SystemExit(f"--modes: no mode's name starts with {', '.join(flags.FLAGS.modes)} "
                         f"(modes: {', '.join(modes(quick))})")
    # Results are rewritten after each setting, so a long run that is stopped
    # keeps the settings it finished.
    for setting in flags.FLAGS.settings or default_settings(quick):
        new = measure(quick, settings=(setting,), seeds=seeds, only=flags.FLAGS.modes)
        replaced = {(r["setting"], r["mode"], r["seed"]) for r in new}
        runs = [r for r in runs if (r["setting"], r["mode"], r["seed"]) not in replaced] + new
        table = markdown(runs)
        write_results(out, {"quick": quick, "runs": runs, **key_figures(runs)}, table)
        plot(runs, setting, f"{out}_{setting}.png")
    print(table)


if __name__ == "__main__":
    # Flags only for the command line: benchmarks.__main__ imports measure().
    flags.DEFINE_bool("quick", False, "MNIST MLP, 2 seeds, fewer ratios")
    flags.DEFINE_string("out", "benchmarks/results/bytes", "output path, no extension")
    flags.DEFINE_list("settings", None, f"settings to run (default: all; {', '.join(SETTINGS)})")
    flags.register_validator("settings", lambda v: not v or set(v) <= set(SETTINGS),
                             f"--settings: each one of {', '.join(SETTINGS)}")
    flags.DEFINE_list("seeds", None, "seeds to run (default: 1,2,3; --quick: 1,2)")
    flags.register_validator("seeds", lambda v: not v or all(s.isdigit() for s in v),
                             "--seeds: non-negative integers")
    flags.DEFINE_list("modes", None, "run only the modes whose names start with one of these "
                      "(e.g. stc, fu, 'dpu ternary', target)")
    flags.DEFINE_bool("merge", False, "add the runs to those in <out>.json (replacing the "
                      "same setting, mode and seed) and rewrite the tables from all of them")
    app.run(main)
