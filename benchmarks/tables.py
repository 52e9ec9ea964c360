"""Formatting and checks shared by the benchmark tables."""

from typing import Dict, Iterable, Sequence

import numpy as np

# Settings a comparison table may vary: what is compared (the method and
# what it resolves, the ratio), the seed, and where files go. A run folder
# and an export that does not bound training do not change what is trained.
COMPARED = ("method", "update_ratio", "contribution_mix", "reinit", "fu_init", "seed",
            "out_dir", "export_tflite", "int8_bounds")


def mean_sd(values) -> str:
    """'+1.23 ± 0.45' (sample standard deviation), or 'n/a' for no values."""
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):+.2f} ± {sd:.2f}"


def standard_error(values) -> float:
    """The standard error of the mean (0 for fewer than two values)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def mean_se(values, signed: bool = True) -> str:
    """'+1.23 ± 0.20' (mean ± standard error of the mean), or 'n/a'."""
    if not values:
        return "n/a"
    return f"{np.mean(values):{'+' if signed else ''}.2f} ± {standard_error(values):.2f}"


def check_one_protocol(configs: Iterable[Dict], varying: Sequence[str] = COMPARED) -> None:
    """Refuses to tabulate runs whose settings differ beyond `varying`.

    Training inside int8 bounds changes what is trained, so it is compared
    as its own setting: `export_tflite and int8_bounds`.

    Raises:
      ValueError: naming the first setting that differs and two of its values.
    """
    seen: Dict[str, object] = {}
    for config in configs:
        settings = {k: v for k, v in config.items() if k not in varying}
        settings["trains_in_int8_bounds"] = bool(config.get("export_tflite")
                                                 and config.get("int8_bounds", True))
        for key, value in settings.items():
            if key in seen and seen[key] != value:
                raise ValueError(f"runs differ in {key} ({seen[key]!r} vs {value!r}) beyond "
                                 "the compared settings; they do not belong in one table")
            seen.setdefault(key, value)


def write_results(out: str, doc: Dict, table: str) -> None:
    """Writes `<out>.json` (the runs) and `<out>.md` (the table), making the folder."""
    import json  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(table)
