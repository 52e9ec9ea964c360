"""`--target_gap`: the smallest update that keeps the device within G points of a full one.

Step 1 of a DPU round trains the whole model from the deployed one; under
a target it runs the epochs of `--method=fu --fu_init=last_round` (the
one-step `--single_step_epochs`), so its model is the warm-started full
update a user would otherwise send, epoch for epoch, and the server knows
each round how good sending everything would be. The round then sends the
fewest elements whose fine-tuned candidate is within G points of it on
validation, or nothing when the deployed model already is.

Which samples judge. The validation samples that pick each step's best
epoch flatter the models they picked, and the smallest size that passes is
the one they flatter most. `--target_judge_share` holds a random share of
the validation split out to judge the gap only (`judge_split`).

Noise. The validation split is small (300 samples here: one sample is a
third of a point), so both sides are compared on the *same* samples: the
gap is (b - c) / n, where b samples only the full model gets right and c
only the candidate, and its standard error sqrt(b + c - (b - c)^2 / n) / n
is far smaller than that of two independent accuracies. A candidate passes
when gap + z * SE <= G (`--target_confidence` = z; 0, the default, trusts
the point estimate, and every round records both figures). A larger z
certifies the gap at the price of bytes; with 300 samples z = 1 already
costs about a point, so for a confident target enlarge the validation split.

Search. The elements are ranked once, by step 1's scores. Rewound
candidates (no fine-tuning) cost one evaluation each, so sizes on a
doubling grid are screened first: the smallest one whose rewound model
already passes bounds the search from above (fine-tuning from it can only
do better on validation). Then at most `--target_search_steps` sizes are
fine-tuned (E epochs each, from the optimizer state step 1 left), starting
from the size the last round settled on and bisecting on a log scale
between the largest failing and the smallest passing size.
"""

import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import numpy as np

from tf_dpu.errors import ConfigError


@dataclasses.dataclass
class Gap:
    """A candidate against the full model, on the same validation samples (points)."""

    gap: float
    upper: float
    passes: bool


def paired_gap(full_correct: np.ndarray, candidate_correct: np.ndarray, target: float,
               confidence: float) -> Gap:
    """The accuracy gap full - candidate, its upper bound gap + z * SE, and the verdict.

    Args:
      full_correct, candidate_correct: per validation sample, whether each
        model classifies it correctly.
      target: G, in points.
      confidence: z, the number of standard errors added to the gap.
    """
    n = len(full_correct)
    only_full = int(np.count_nonzero(full_correct & ~candidate_correct))
    only_candidate = int(np.count_nonzero(~full_correct & candidate_correct))
    gap = (only_full - only_candidate) / n
    se = math.sqrt(max(only_full + only_candidate - (only_full - only_candidate) ** 2 / n,
                       0.0)) / n
    upper = gap + confidence * se
    # A hair of tolerance: accuracies are multiples of 1/n and G may be one.
    return Gap(100 * gap, 100 * upper, 100 * upper <= target + 1e-9)


def judge_split(samples: int, share: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Splits validation indices into (select, judge) for `--target_judge_share`.

    The judge is a random subset, so a validation split stored in class
    order still gives both parts every class.

    Args:
      samples: the validation split's size.
      share: the fraction that judges the gap, in [0, 1).
      seed: the run's seed.

    Returns:
      Sorted indices that select (best epochs, whether a round is sent) and
      sorted indices that judge the gap; the judge is empty when share is 0.

    Raises:
      ConfigError: a share that leaves either part empty.
    """
    judges = int(round(share * samples))
    if share and not 0 < judges < samples:
        raise ConfigError(f"--target_judge_share={share:g} of {samples} validation samples "
                         f"leaves {judges} to judge and {samples - judges} to select; both "
                         "need at least one (raise --validation_samples)")
    order = np.random.RandomState([seed, 17]).permutation(samples)
    return np.sort(order[judges:]), np.sort(order[:judges])


def size_grid(smallest: int, cap: int) -> List[int]:
    """Sizes smallest, 2 x smallest, ... below cap, then cap itself."""
    sizes, size = [], max(1, smallest)
    while size < cap:
        sizes.append(size)
        size *= 2
    return sizes + [cap]


@dataclasses.dataclass
class Trial:
    """One size tried: its verdict and, if fine-tuned, the candidate it gave."""

    size: int
    gap: Gap
    fine_tuned: bool
    candidate: object = None


def search(screen: Callable[[int], Gap], fine_tune: Callable[[int], Tuple[object, Gap]],
           grid: List[int], start: int, steps: int) -> Tuple[Optional[Trial], List[Trial]]:
    """The smallest passing size found within `steps` fine-tunings.

    Args:
      screen: size -> the rewound candidate's verdict (cheap).
      fine_tune: size -> (fine-tuned candidate, its verdict) (E epochs).
      grid: sizes to screen, ascending; the last is the cap.
      start: the first size to fine-tune (the last round's choice).
      steps: the most fine-tunings.

    Returns:
      The passing trial of the smallest size (None if none passes up to the
      cap) and every trial in order.
    """
    trials = []
    high = None   # smallest size known to pass
    for size in grid:
        verdict = screen(size)
        trials.append(Trial(size, verdict, False))
        if verdict.passes:
            high = trials[-1]
            break
    low = 0       # largest size known to fail after fine-tuning
    upper_size = high.size if high else grid[-1]
    guess = min(max(1, start), upper_size)
    if high is not None and guess >= high.size:
        guess = high.size // 2   # the screen passed there: fine-tuning may pass below
    for _ in range(steps):
        if guess < 1 or (high is not None and guess >= high.size):
            break
        candidate, verdict = fine_tune(guess)
        trials.append(Trial(guess, verdict, True, candidate))
        if verdict.passes:
            high = trials[-1]
        else:
            low = guess
            if guess >= upper_size:
                break   # even the cap fails
        top = high.size if high else upper_size
        if top <= max(low, 1) * 1.25:
            break
        if low == 0:
            guess = top // 2                                   # shrink from a pass
        elif high is None:
            guess = min(upper_size, max(int(math.sqrt(low * top)), 2 * low))   # grow
        else:
            guess = int(round(math.sqrt(low * top)))           # bisect (log scale)
    return high, trials
