"""Formatting shared by the benchmark tables."""

import numpy as np


def mean_sd(values) -> str:
    """'+1.23 ± 0.45' (sample standard deviation), or 'n/a' for no values."""
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):+.2f} ± {sd:.2f}"
