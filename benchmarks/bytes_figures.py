"""The bytes benchmark's key figures, computed from its runs (no flags, importable)."""

import numpy as np

# The FU modes a method's gap is measured against (the better one per seed),
# and the mode whose bytes are compared with the cheapest fixed k.
FU_NAMES = ("fu same_init", "fu last_round")
TARGET = "target 0.5"
# Warm-started FU sent as its int8 delta (real patches, trained inside the
# int8 range like the partial methods): the "send everything, coded" baseline.
FU_DELTA = "fu last_round, delta patch"
PARETO_GAPS = (0.5, 1.0, 2.0)
# Sparse ternary compression of the warm-started full update (`--method=stc`).
STC_PREFIX = "stc k="
# The modes the product offers (fixed k, per-bit ranking, targets); the
# others are baselines.
PRODUCT_PREFIXES = ("dpu ", "target ")


def accuracy(run):
    """What the device runs: FU's float model (re-converted whole), else the int8 file."""
    key = "test_accuracy" if run["mode"] in FU_NAMES else "device_accuracy"
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
            "target_holds_on_test": holds_on_test(runs),
            "product_vs_baselines_at_1_point": against_baselines(runs, 1.0)}


def _means(runs, setting) -> dict:
    """Per mode of the setting: (mean gap over seeds, mean bytes of rounds 1-7)."""
    means = {}
    for mode in dict.fromkeys(r["mode"] for r in runs if r["setting"] == setting):
        values = gaps_and_bytes(runs, setting, mode)
        if values:
            means[mode] = (np.mean([g for g, _ in values]), np.mean([b for _, b in values]))
    return means


def _cheapest(means, gap, keep):
    reaching = [(b, mode) for mode, (g, b) in means.items() if g >= -gap and keep(mode)]
    return min(reaching) if reaching else (None, None)


def against_baselines(runs, gap: float) -> dict:
    """Per setting, within `gap` points of the better FU: the product's cheapest mode
    against the coded dense FU delta and against the cheapest sparse ternary compression.

    Each entry holds the bytes and mode of each side and the ratios (None
    where a side never comes within the gap).
    """
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        means = _means(runs, setting)
        product, product_mode = _cheapest(means, gap, lambda m: m.startswith(PRODUCT_PREFIXES))
        delta, _ = _cheapest(means, gap, lambda m: m == FU_DELTA)
        stc, stc_mode = _cheapest(means, gap, lambda m: m.startswith(STC_PREFIX))
        if product is None:
            continue
        ratio = lambda other: round(product / other, 3) if other else None  # noqa: E731
        best = min((b for b in (delta, stc) if b), default=None)
        out[setting] = {"product_mode": product_mode, "product_bytes": round(product),
                        "fu_delta_bytes": None if delta is None else round(delta),
                        "stc_mode": stc_mode, "stc_bytes": None if stc is None else round(stc),
                        "vs_fu_delta": ratio(delta), "vs_stc": ratio(stc),
                        "vs_best_baseline": ratio(best)}
    return out


def pareto(runs, setting) -> dict:
    """Per gap G in points: (the cheapest mode within G of the better FU, its mean bytes).

    A mode qualifies when its mean gap over seeds is -G or better; modes that
    ship whole files qualify too, so the answer is never worse than FU.
    """
    means = _means(runs, setting)
    return {gap: _cheapest(means, gap, lambda mode: True)[::-1] for gap in PARETO_GAPS}


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
