"""The bytes benchmark's key figures, computed from its runs (no flags, importable)."""

import numpy as np

# The FU modes a method's gap is measured against (the better one per seed),
# and the mode whose bytes are compared with the cheapest fixed k.
FU_NAMES = ("fu same_init", "fu last_round")
TARGET = "target 0.5"


def accuracy(run):
    """What the device runs: FU's float model (re-converted whole), else the int8 file."""
    key = "test_accuracy" if run["mode"].startswith("fu") else "device_accuracy"
    return np.array(run[key])


def by_mode(runs, setting, mode, seed):
    for r in runs:
        if (r["setting"], r["mode"], r["seed"]) == (setting, mode, seed):
            return r
    return None


def gaps_and_bytes(runs, setting, mode):
    """Per seed: (mean over rounds 1-7 of method - better FU, in points; bytes of rounds 1-7)."""
    out = []
    for seed in sorted({r["seed"] for r in runs if r["setting"] == setting}):
        fus = [by_mode(runs, setting, m, seed) for m in FU_NAMES]
        run = by_mode(runs, setting, mode, seed)
        if run is None or None in fus:
            continue
        better = max((accuracy(f) for f in fus), key=lambda a: a[1:].mean())
        out.append((100 * float(np.mean(accuracy(run)[1:] - better[1:])),
                    float(sum(run["sent_bytes"][1:]))))
    return out


def key_figures(runs) -> dict:
    """bytes_target_vs_fixed_k and target_gap_test_points, over settings and seeds."""
    ratios, gaps = [], []
    for setting in dict.fromkeys(r["setting"] for r in runs):
        target = gaps_and_bytes(runs, setting, TARGET)
        if not target:
            continue
        gap, sent = np.mean([g for g, _ in target]), np.mean([b for _, b in target])
        gaps.append(gap)
        fixed = []
        for mode in dict.fromkeys(r["mode"] for r in runs if r["setting"] == setting):
            if mode.startswith("dpu k="):
                values = gaps_and_bytes(runs, setting, mode)
                fixed.append((np.mean([g for g, _ in values]), np.mean([b for _, b in values])))
        reaching = [b for g, b in fixed if g >= gap]
        if reaching:
            ratios.append(sent / min(reaching))
    return {"bytes_target_vs_fixed_k": round(float(np.mean(ratios)), 3) if ratios else None,
            "target_gap_test_points": round(float(np.mean(gaps)), 2) if gaps else None,
            "target_holds_on_test": holds_on_test(runs)}


def holds_on_test(runs) -> dict:
    """Per target mode: (share of rounds 1-7 within G of their own full update on test, count)."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in runs
                              if r.get("config", {}).get("target_gap") is not None):
        gaps = [(r["config"]["target_gap"], g) for r in runs if r["mode"] == mode
                for g in r.get("target_gap_test", [])[1:] if g is not None]
        if gaps:
            out[mode] = (sum(g <= target + 1e-9 for target, g in gaps) / len(gaps), len(gaps))
    return out
