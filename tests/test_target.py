"""--target_gap: the paired verdict, the size search, and rounds that send the least."""

import json

import numpy as np
import pytest

from conftest import run_cli
from tf_dpu import RunConfig
from tf_dpu.errors import ConfigError
from tf_dpu.rounds import run
from tf_dpu.target import Gap, judge_split, paired_gap, search, size_grid


def test_the_gap_is_paired_on_the_same_samples():
    full = np.array([True] * 90 + [False] * 10)
    same = full.copy()
    assert paired_gap(full, same, 0.0, 0.0) == Gap(0.0, 0.0, True)
    worse = full.copy()
    worse[:3] = False                     # 3 samples only the full model gets right
    g = paired_gap(full, worse, 2.0, 0.0)
    assert g.gap == pytest.approx(3.0) and not g.passes
    assert paired_gap(full, worse, 3.0, 0.0).passes       # G is inclusive
    # z standard errors of the paired difference: sqrt(b + c - (b - c)^2 / n) / n.
    bounded = paired_gap(full, worse, 3.0, 1.0)
    assert bounded.upper == pytest.approx(3.0 + 100 * np.sqrt(3 - 9 / 100) / 100)
    assert not bounded.passes
    better = full.copy()
    better[95] = True                     # the candidate wins one sample
    assert paired_gap(full, better, 0.0, 0.0).gap == pytest.approx(-1.0)


def test_size_grid_doubles_up_to_the_cap():
    assert size_grid(100, 1000) == [100, 200, 400, 800, 1000]
    assert size_grid(0, 3) == [1, 2, 3]


def _passes_from(threshold, screened_threshold):
    calls = []

    def screen(size):
        calls.append(("screen", size))
        return Gap(0.0, 0.0, size >= screened_threshold)

    def fine_tune(size):
        calls.append(("tune", size))
        return f"candidate {size}", Gap(0.0, 0.0, size >= threshold)

    return screen, fine_tune, calls


def test_search_bisects_below_the_screened_size():
    screen, fine_tune, calls = _passes_from(threshold=300, screened_threshold=1600)
    found, trials = search(screen, fine_tune, size_grid(100, 10000), start=1000, steps=3)
    assert [c for c in calls if c[0] == "screen"][-1] == ("screen", 1600)   # stops at a pass
    tuned = [c[1] for c in calls if c[0] == "tune"]
    assert tuned[0] == 1000 and len(tuned) == 3          # starts from the last size
    assert found.fine_tuned and found.size == min(t for t in tuned if t >= 300)
    assert found.candidate == f"candidate {found.size}"


def test_search_from_at_or_above_the_screened_pass_fine_tunes_below_it():
    """Last round's size may already be at or above the smallest size whose rewound
    candidate passes; fine-tuning can only help, so the search must go below it."""
    for start in (800, 5000):
        screen, fine_tune, calls = _passes_from(threshold=300, screened_threshold=800)
        found, _ = search(screen, fine_tune, size_grid(100, 10000), start=start, steps=4)
        tuned = [c[1] for c in calls if c[0] == "tune"]
        assert tuned and tuned[0] == 400 and max(tuned) < 800, (start, tuned)
        assert found.fine_tuned and 300 <= found.size < 800


def test_search_grows_towards_the_cap_and_reports_a_miss():
    screen, fine_tune, calls = _passes_from(threshold=10 ** 9, screened_threshold=10 ** 9)
    found, trials = search(screen, fine_tune, size_grid(100, 5000), start=500, steps=5)
    assert found is None
    tuned = [c[1] for c in calls if c[0] == "tune"]
    assert tuned[0] == 500 and tuned[-1] == 5000 and tuned == sorted(tuned)


def test_search_never_fine_tunes_more_than_asked():
    screen, fine_tune, calls = _passes_from(threshold=2, screened_threshold=10 ** 9)
    search(screen, fine_tune, size_grid(1, 10 ** 6), start=10 ** 5, steps=2)
    assert sum(c[0] == "tune" for c in calls) == 2


SMALL = dict(rounds=4, initial_samples=100, samples_per_round=100, epochs=2, batch_size=64,
             seed=3)


def test_a_huge_target_sends_nothing_and_a_zero_target_sends_more(small_mnist):
    lax = run(RunConfig(**SMALL, target_gap=100.0), progress=None, data=small_mnist).rounds
    assert lax[0]["sent"] and not any(r["sent"] for r in lax[1:])
    assert all(r["target_met"] and r["updated_elements"] == 0 for r in lax[1:])
    strict = run(RunConfig(**SMALL, target_gap=0.0, max_update_ratio=0.05,
                           target_search_steps=2), progress=None, data=small_mnist).rounds
    cap = int(np.ceil(0.05 * 266200))
    searched = 0
    for r in strict[1:]:
        trials, met = r["target_trials"], r["target_met"]
        assert r["target_full_val_accuracy"] > 0
        assert met == (r["target_gap_upper"] <= 1e-9)   # G = 0, z = 0: the gap itself
        assert all(size <= cap for size, _, _ in trials)
        assert sum(t[2] for t in trials) <= 4   # 2 steps, the found size, the cap
        passing = [size for size, gap, _ in trials if gap <= 1e-9]
        if not trials:   # the deployed model already passes: nothing is sent
            assert met and r["updated_elements"] == 0 and not r["sent"]
            continue
        searched += 1
        if met:   # the smallest size that passed, never more
            assert passing and r["updated_elements"] <= min(passing)
        else:     # nothing passed: at most the cap
            assert not passing and r["updated_elements"] <= cap
    assert searched > 0


@pytest.mark.parametrize("changes, message", [
    ({"method": "rpu"}, "needs step 1's full model"),
    ({"iterative": True}, "cannot be combined"),
    ({"reinit": "doubling"}, "cannot be combined with --reinit"),
    ({"target_confidence": 9.0}, "--target_confidence"),
])
def test_target_settings_are_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(target_gap=0.5, **changes).resolved()


def test_the_command_line_records_the_target(tmp_path):
    proc = run_cli("--dataset=mnist", "--rounds=2", "--initial_samples=200",
                   "--samples_per_round=200", "--epochs=1", "--target_gap=0.5",
                   f"--out_dir={tmp_path}/run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    record = json.load(open(tmp_path / "run" / "metrics.json"))["rounds"][1]
    assert {"target_gap_points", "target_gap_upper", "target_met"} <= set(record)


def test_the_target_measures_against_the_full_update_a_user_would_run(small_mnist):
    """Step 1 under --target_gap is --method=fu --fu_init=last_round's training, epoch for epoch.

    Round 1 starts both runs from the same round-0 model, so the full model
    the target is judged against must be exactly the warm-started FU's (a
    step 1 of --epochs only would be a weaker, flattering reference).
    """
    settings = dict(SMALL, rounds=2, epochs=1, single_step_epochs=3)
    target_run = run(RunConfig(**settings, target_gap=0.0, max_update_ratio=0.02,
                               target_search_steps=1), progress=None, data=small_mnist).rounds
    fu_run = run(RunConfig(**settings, method="fu", fu_init="last_round"), progress=None,
                 data=small_mnist).rounds
    one, fu_one = target_run[1], fu_run[1]
    assert one["target_full_val_accuracy"] == fu_one["val_accuracy"]
    assert one["full_test_accuracy"] == fu_one["test_accuracy"]
    # The round's own gap on test, beside the validation one, same sign.
    assert one["target_gap_test_points"] == pytest.approx(
        100 * (one["full_test_accuracy"] - one["test_accuracy"]), abs=1e-3)
    assert "target_gap_test_points" not in run(RunConfig(**settings, update_ratio=0.01),
                                               progress=None, data=small_mnist).rounds[1]


def test_the_judge_split_is_a_random_disjoint_share():
    select, judge = judge_split(300, 0.4, seed=5)
    assert len(judge) == 120 and len(select) == 180
    assert sorted(np.concatenate([select, judge]).tolist()) == list(range(300))
    assert judge.max() > 200 and judge.min() < 100   # not a block at one end
    assert len(judge_split(300, 0.0, seed=5)[1]) == 0
    with pytest.raises(ConfigError, match="both need at least one"):
        judge_split(3, 0.9, seed=5)


def test_held_out_samples_judge_the_gap_and_the_rest_pick_epochs(small_mnist):
    """--target_judge_share=0.375 of 200: 75 samples judge, 125 pick epochs."""
    rounds = run(RunConfig(**dict(SMALL, rounds=3), target_gap=0.0, max_update_ratio=0.02,
                           target_search_steps=1, target_judge_share=0.375), progress=None,
                 data=small_mnist).rounds
    for r in rounds:
        # Accuracies on the selecting part are multiples of 1/125.
        assert r["val_accuracy"] * 125 == pytest.approx(round(r["val_accuracy"] * 125))
    for r in rounds[1:]:
        assert r["target_judge_samples"] == 75
        # Gaps on the judging part are multiples of 100/75 points. On the
        # 125 selecting samples they would be multiples of 0.8, and only
        # multiples of 4 points would also be multiples of 100/75.
        for _, gap, _ in r["target_trials"] or [[0, r["target_gap_points"], 0]]:
            assert gap * 0.75 == pytest.approx(round(gap * 0.75), abs=1e-3)
    assert any(round(gap * 0.75) % 3 for r in rounds[1:] for _, gap, _ in r["target_trials"])


def test_a_judge_share_without_a_target_or_leaving_nothing_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="add --target_gap"):
        RunConfig(target_judge_share=0.5).resolved()
    proc = run_cli("--dataset=digits", "--validation_samples=2", "--target_gap=1", "--rounds=2",
                   "--target_judge_share=0.1", f"--out_dir={tmp_path}/run", "--quiet")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--target_judge_share=0.1 of 2 validation samples" in proc.stderr
    assert not (tmp_path / "run").exists()
