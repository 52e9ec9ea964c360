"""DPU and every baseline of the reference, each a strategy over one round.

Every method runs through `run_step`, the one helper around the custom
training loop, and returns its best-on-validation candidate. Whether that
candidate is deployed ("send nothing" when it does not beat the device's
model) is the round loop's decision, the same for every method.
"""

import dataclasses
import math
import time
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from tf_dpu import bitcost, contribution, selection, target, ternary
from tf_dpu.config import RunConfig
from tf_dpu.training import Trainer, learning_rate_at
from tf_dpu.weights import BIAS, KERNEL, STATE, Layout

Weights = List[np.ndarray]


@dataclasses.dataclass
class RoundContext:
    """What a method needs to run one round.

    Attributes:
      config: the resolved run settings.
      trainer: the shared training loop (model, optimizer, masks).
      layout: kinds of the model's weights.
      index: the round number r.
      x, y: D^r as tensors; x_val, y_val: the validation split.
      start: w_start, the point this round trains from (deployed model or w0).
      w0: the saved random initialization.
      budget: ceil(k * I), the most kernel elements a partial round may change.
      rng: randomness of this round (RPU's masks).
      fresh_init: builds a new random initialization (FU diff_init).
      progress: receives one line per epoch.
      select: picks the elements to update from scores (global top-k of the
        budget, or as many as fit a byte budget).
      byte_budget: whether `select` counts bytes rather than elements.
      checkpoints: saves each epoch and restores finished ones on resume.
      log_epoch: receives (step name, epoch, {"loss", "val_accuracy",
        "learning_rate"}) after every epoch (TensorBoard curves).
      memory: what a method carries from round to round (`--target_gap`'s
        last size), saved with each round for resuming.
      byte_cap: callable(scores) -> the most elements of that ranking whose
        patch fits `--budget_bytes` (None: no byte cap).
      int8_scales: per weight, the deployed file's int8 step in Keras units
        (None before round 0's file exists, or for weights not stored as int8).
      test_accuracy: callable(weights) -> test accuracy, for what a round
        reports about models it does not deploy (DPU's full step-1 model).
      x_judge, y_judge: validation samples that only judge `--target_gap`
        (`--target_judge_share`; None: x_val, y_val judge it).
      training_seconds: wall time spent in training epochs so far this round
        (with their validation passes); the rest of a round is selection,
        evaluation and export.
    """

    config: RunConfig
    trainer: Trainer
    layout: Layout
    index: int
    x: tf.Tensor
    y: tf.Tensor
    x_val: tf.Tensor
    y_val: tf.Tensor
    start: Weights
    w0: Weights
    budget: int
    rng: np.random.RandomState
    fresh_init: Callable[[], Weights]
    progress: Callable[[str], None]
    select: Callable[[dict], selection.Masks] = None
    byte_budget: bool = False
    checkpoints: Optional[object] = None   # tf_dpu.checkpoints.EpochCheckpoints
    log_epoch: Callable[[str, int, dict], None] = lambda step, epoch, values: None
    memory: dict = dataclasses.field(default_factory=dict)
    byte_cap: Optional[Callable[[dict], int]] = None
    int8_scales: Optional[List[Optional[np.ndarray]]] = None
    test_accuracy: Optional[Callable[[Weights], float]] = None
    x_judge: Optional[tf.Tensor] = None
    y_judge: Optional[tf.Tensor] = None
    training_seconds: float = 0.0


@dataclasses.dataclass
class Candidate:
    """The best model a round produced, and how it came about."""

    weights: Weights
    val_accuracy: float
    step: str
    epoch: int
    selected: Optional[int] = None   # kernel elements allowed to change
    base: str = "start"               # what the update is relative to: start|zeros
    keep: bool = False                # the device keeps its model (nothing to send)
    info: dict = dataclasses.field(default_factory=dict)   # added to the round's record


def _best(a: Optional[Candidate], b: Candidate) -> Candidate:
    return b if a is None or b.val_accuracy > a.val_accuracy else a


def run_step(ctx: RoundContext, name: str, epochs: int, *, masks=None,
             accumulate: bool = False, bn_training: bool = True,
             best: Optional[Candidate] = None,
             project: Optional[Callable[[], None]] = None) -> Candidate:
    """Trains the model's current weights for `epochs` epochs; returns the best epoch.

    The learning-rate schedule restarts; the optimizer state carries over
    from whatever ran before (step 1 into step 2, as the reference does).

    Args:
      ctx: the round.
      name: shown in progress lines and recorded with the candidate.
      epochs: epochs to run.
      masks: per-weight boolean masks, None to train everything.
      accumulate: accumulate the local contribution.
      bn_training: BatchNorm in training mode.
      best: a candidate to beat (e.g. the rewound model before step 2).
      project: called after every epoch to move the model onto the values
        that can be sent (`--value_grid`); validation then judges the
        projected model, so every candidate is one the device can hold.
    """
    trainer, config = ctx.trainer, ctx.config
    trainer.set_masks(masks)
    saver = ctx.checkpoints
    step = saver.next_step() if saver else None
    first = 0
    saved = saver.load(step) if saver else None
    if saved is not None:
        trainer.restore(saved["state"])
        trainer.shuffle_state = saved["shuffle"]
        if saved["best"] is not None:
            best = Candidate(*saved["best"])
        first = saved["epoch"] + 1
        ctx.progress(f"round {ctx.index} {name}: resumed after epoch {saved['epoch'] + 1}")
        if saved["finished"]:
            return best
    for epoch in range(first, epochs):
        lr = learning_rate_at(config.lr_schedule, config.learning_rate, epoch, epochs,
                              config.lr_gamma)
        started = time.perf_counter()
        if project is None:
            loss, val = trainer.train_epoch(ctx.x, ctx.y, lr, masked=masks is not None,
                                            accumulate=accumulate, bn_training=bn_training,
                                            validation=(ctx.x_val, ctx.y_val))
        else:
            loss = trainer.train_epoch(ctx.x, ctx.y, lr, masked=masks is not None,
                                       accumulate=accumulate, bn_training=bn_training)
            project()
            val = trainer.accuracy(ctx.x_val, ctx.y_val)
        ctx.training_seconds += time.perf_counter() - started
        if not math.isfinite(loss):
            ctx.progress(f"round {ctx.index} {name} epoch {epoch + 1}: loss is {loss}; "
                         "stopping this step (lower --learning_rate?)")
            break
        ctx.progress(f"round {ctx.index} {name} epoch {epoch + 1}/{epochs} "
                     f"lr {lr:.2e} loss {loss:.4f} val {val:.4f}")
        ctx.log_epoch(name, epoch + 1, {"loss": loss, "val_accuracy": val, "learning_rate": lr})
        if best is None or val > best.val_accuracy:
            weights = trainer.model.get_weights()
            if not all(np.isfinite(w).all() for w in weights):
                ctx.progress(f"round {ctx.index} {name} epoch {epoch + 1}: weights are not "
                             "finite; stopping this step (lower --learning_rate?)")
                break
            best = Candidate(weights, val, name, epoch + 1)
        if saver and saver.due():
            saver.save(step, epoch, epoch == epochs - 1, trainer.state(), trainer.shuffle_state,
                       best)
    if best is None:  # diverged in its first epoch: a candidate that never wins
        best = Candidate(trainer.model.get_weights(), -1.0, name, 0)
    return best


def _evaluate_current(ctx: RoundContext, step: str) -> Candidate:
    return Candidate(ctx.trainer.model.get_weights(),
                     ctx.trainer.accuracy(ctx.x_val, ctx.y_val), step, 0)


def _candidates(ctx: RoundContext) -> List[int]:
    """Weights that compete for the budget: kernels, plus biases if masked."""
    kinds = (KERNEL, BIAS) if ctx.config.bias_policy == "masked" else (KERNEL,)
    return ctx.layout.indices(*kinds)


def _bn_training(ctx: RoundContext) -> bool:
    # Moving statistics change the deployed model; under the frozen and masked
    # bias policies a partial round must not touch them.
    return ctx.config.bias_policy == "full"


def _step_masks(ctx: RoundContext, kernel_masks: selection.Masks) -> selection.Masks:
    """Completes kernel masks with the bias policy's masks for step 2."""
    masks = list(kernel_masks)
    for i in ctx.layout.indices(BIAS):
        if masks[i] is None:
            full = ctx.config.bias_policy == "full"
            masks[i] = np.full(ctx.layout.shapes[i], full, bool)
    return masks


def rewind(ctx: RoundContext, final: Weights, start: Weights,
           masks: selection.Masks) -> Weights:
    """w = m * w_final + (1 - m) * w_start, exactly (no arithmetic on the bits).

    Biases follow the bias policy: kept trained under `full` (the reference
    trains them in both steps), masked like kernels under `masked`, rewound
    under `frozen`. BN moving statistics stay trained only under `full`.
    """
    policy = ctx.config.bias_policy
    out = []
    for i, kind in enumerate(ctx.layout.kinds):
        if masks[i] is not None and kind != STATE:
            out.append(np.where(masks[i], final[i], start[i]))
        elif kind == KERNEL or policy != "full":
            out.append(start[i].copy())
        else:
            out.append(final[i].copy())
    return out


def full_training(ctx: RoundContext, start: Weights) -> Candidate:
    """Trains every parameter from `start` (FU, and a fully deployed round 0)."""
    ctx.trainer.model.set_weights(start)
    ctx.trainer.reset_optimizer()
    return run_step(ctx, "full", ctx.config.single_step_epochs)


def fu(ctx: RoundContext) -> Candidate:
    """Full updating from w0 (same_init), w^(r-1) (last_round) or a new init."""
    start = {"same_init": ctx.w0, "last_round": ctx.start,
             "diff_init": None}[ctx.config.fu_init]
    if start is None:
        start = ctx.fresh_init()
    return full_training(ctx, start)


def dpu(ctx: RoundContext) -> Candidate:
    """DPU (λ from the config; GCPU is λ = 1, LCPU is λ = 0)."""
    trainer, config = ctx.trainer, ctx.config
    bn = _bn_training(ctx)
    trainer.model.set_weights(ctx.start)
    trainer.reset_optimizer()
    trainer.reset_contribution()
    # Step 1 is there for the metric (and, for --target_gap, as the full
    # update to measure against), not for a deployable candidate. A target
    # is only as honest as its reference: under --target_gap step 1 runs
    # the epochs of the full update a user would run instead
    # (--method=fu --fu_init=last_round), not a shortened one.
    epochs = config.single_step_epochs if config.target_gap is not None else config.epochs
    full = run_step(ctx, "step 1", epochs, accumulate=True, bn_training=bn)
    final = trainer.model.get_weights()
    indices = _candidates(ctx)
    scores = contribution.dpu_scores(final, ctx.start, trainer.contribution(), indices,
                                     config.contribution_mix, _warn(ctx))
    if config.iterative:
        return _with_full(ctx, full, _iterative(ctx, scores, indices, final, bn))
    scores = selection.preselect(scores, config.layer_preselect)
    if config.rank == "per_bit" and ctx.int8_scales is not None:
        scores = bitcost.per_bit(scores, final, ctx.start, ctx.int8_scales,
                                 ctx.memory.get("target_size") or ctx.budget)
    if config.target_gap is not None and ctx.index > 0:
        return _with_full(ctx, full, _to_target(ctx, final, scores, full, bn))
    return _with_full(ctx, full, _fine_tune(ctx, final, ctx.select(scores), bn, "step 2",
                                            config.epochs))


def _with_full(ctx: RoundContext, full: Candidate, candidate: Candidate) -> Candidate:
    """Adds what step 1's full model reached: the round's distance to full retraining.

    Step 1 trains every parameter from the deployed model for the metric, so
    the full update a user would compare against comes at no extra training.
    """
    info = {"full_val_accuracy": full.val_accuracy}
    if ctx.test_accuracy is not None:
        info["full_test_accuracy"] = ctx.test_accuracy(full.weights)
    candidate.info = {**info, **candidate.info}
    return candidate


def _to_target(ctx: RoundContext, final: Weights, scores, full: Candidate, bn) -> Candidate:
    """The smallest update within `--target_gap` of step 1's full model (see tf_dpu.target)."""
    config, trainer = ctx.config, ctx.trainer
    length = len(final)

    # Samples that picked each step's best epoch flatter the models they
    # picked; held-out ones (--target_judge_share) judge the gap unbiased.
    x_judge, y_judge = ((ctx.x_val, ctx.y_val) if ctx.x_judge is None
                        else (ctx.x_judge, ctx.y_judge))

    def correct_of(weights):
        trainer.model.set_weights(weights)
        return trainer.correct(x_judge, y_judge)

    def verdict(correct):
        return target.paired_gap(full_correct, correct, config.target_gap,
                                 config.target_confidence)

    full_correct = correct_of(full.weights)
    kept = verdict(correct_of(ctx.start))
    info = {"target_full_val_accuracy": full.val_accuracy, "target_judge_samples": int(y_judge.shape[0])}
    if kept.passes:
        ctx.progress(f"round {ctx.index}: the deployed model is within "
                     f"{config.target_gap:g} points of the full update (gap {kept.gap:+.2f}, "
                     f"bound {kept.upper:+.2f}); nothing to send")
        info.update(target_gap_points=kept.gap, target_gap_upper=kept.upper, target_met=True,
                    target_trials=[])
        return Candidate(ctx.start, -1.0, "target", 0, selected=0, keep=True, info=info)
    total = sum(s.size for s in scores.values())
    cap = max(1, math.ceil(config.max_update_ratio * total - 1e-9))
    if ctx.byte_cap is not None:
        cap = max(1, min(cap, ctx.byte_cap(scores)))
    after_step_1 = trainer.state()

    def masks_of(size):
        return selection.top_k(scores, size, length)

    def screen(size):
        return verdict(correct_of(rewind(ctx, final, ctx.start, masks_of(size))))

    def fine_tune(size):
        trainer.restore(after_step_1)
        candidate = _fine_tune(ctx, final, masks_of(size), bn, f"step 2 ({size} elements)",
                               config.epochs)
        return candidate, verdict(correct_of(candidate.weights))

    start = ctx.memory.get("target_size") or ctx.budget
    found, trials = target.search(screen, fine_tune, target.size_grid(ctx.budget // 4, cap),
                                  start, config.target_search_steps)
    if found is None:   # nothing within the cap passes: the cap's best, if it helps
        tuned = [t for t in trials if t.fine_tuned and t.size == cap]
        if not tuned:
            candidate, gap = fine_tune(cap)
            trials.append(target.Trial(cap, gap, True, candidate))
            tuned = trials[-1:]
        found = tuned[0]
    elif not found.fine_tuned:
        # Only the screen's rewound model was tried at this size: fine-tune it
        # too (its best epoch is at least as good on validation).
        candidate, gap = fine_tune(found.size)
        trials.append(target.Trial(found.size, gap, True, candidate))
        found = trials[-1] if gap.passes or not found.gap.passes else found
        if found.candidate is None:
            masks = masks_of(found.size)
            trainer.model.set_weights(rewind(ctx, final, ctx.start, masks))
            found.candidate = _evaluate_current(ctx, "rewound")
            found.candidate.selected = selection.count(masks)
    ctx.memory["target_size"] = found.size
    candidate = found.candidate
    info.update(target_gap_points=found.gap.gap, target_gap_upper=found.gap.upper,
                target_met=found.gap.passes,
                target_trials=[[t.size, round(t.gap.gap, 4), t.fine_tuned] for t in trials])
    candidate.info = info
    ctx.progress(f"round {ctx.index}: {found.size} elements "
                 f"{'meet' if found.gap.passes else 'do NOT meet'} the target "
                 f"(gap {found.gap.gap:+.2f}, bound {found.gap.upper:+.2f} points; "
                 f"{sum(t.fine_tuned for t in trials)} fine-tuned, "
                 f"{sum(not t.fine_tuned for t in trials)} screened)")
    return candidate


def _warn(ctx: RoundContext) -> Callable[[str], None]:
    return lambda line: ctx.progress(f"round {ctx.index}: {line}")


def _projection(ctx: RoundContext, masks) -> Optional[Callable[[], None]]:
    """`--value_grid=ternary`: puts the model on start ± μ per layer (see tf_dpu.ternary).

    Projected after every epoch rather than every step: the optimizer moves
    the selected elements freely within an epoch, and the projection
    recomputes each layer's μ from where they went.
    """
    if ctx.config.value_grid == "exact":
        return None

    def project():
        weights = ctx.trainer.model.get_weights()
        moved = ternary.ternarize(weights, ctx.start, masks, ctx.int8_scales)
        ctx.trainer.model.set_weights(rewind(ctx, moved, ctx.start, masks))
    return project


def _fine_tune(ctx, final, masks, bn, name, epochs) -> Candidate:
    ctx.trainer.model.set_weights(rewind(ctx, final, ctx.start, masks))
    project = _projection(ctx, masks)
    if project is not None:
        project()
    rewound = _evaluate_current(ctx, "rewound")
    best = run_step(ctx, name, epochs, masks=_step_masks(ctx, masks), bn_training=bn,
                    best=rewound, project=project)
    best.selected = selection.count(masks)
    return best


def _iterative(ctx, scores, indices, final, bn) -> Candidate:
    """The single-round variant, as the reference runs it.

    The selected set shrinks by `iterative_decay` per stage until it reaches
    k: each stage keeps the top of the still-active elements, rewinds the
    others, and fine-tunes `iterative_epochs` epochs. The local contribution
    keeps accumulating over all stages (a rewound element's is dropped: it
    no longer moves); the global one is measured afresh from the round's
    start. The last stage is step 2 of a plain round.
    """
    config, trainer = ctx.config, ctx.trainer
    total = sum(scores[i].size for i in indices)
    ratio, active = 1.0, None
    while True:
        ratio = max(ratio * config.iterative_decay, config.update_ratio)
        keep = ctx.budget if ratio <= config.update_ratio else math.ceil(ratio * total)
        masks = selection.top_k(scores, keep, len(final), active)
        if keep == ctx.budget:
            return _fine_tune(ctx, final, masks, bn, "step 2", config.epochs)
        trainer.model.set_weights(rewind(ctx, final, ctx.start, masks))
        trainer.keep_contribution(masks)
        run_step(ctx, f"shrink {ratio:.4f}", config.iterative_epochs,
                 masks=_step_masks(ctx, masks), accumulate=True, bn_training=bn)
        final = trainer.model.get_weights()
        active = {i: masks[i] for i in indices}
        scores = contribution.dpu_scores(final, ctx.start, trainer.contribution(), indices,
                                         config.contribution_mix, _warn(ctx))


def rpu(ctx: RoundContext) -> Candidate:
    """Random partial updating: a random mask per layer, sparse fine-tuning, no step 1."""
    ctx.trainer.model.set_weights(ctx.start)
    ctx.trainer.reset_optimizer()
    layout = ctx.layout
    if ctx.byte_budget:  # random order, as many as fit the bytes
        masks = ctx.select({i: ctx.rng.rand(*layout.shapes[i]) for i in layout.indices(KERNEL)})
    else:
        masks = selection.random_per_layer(layout.shapes, layout.indices(KERNEL),
                                           ctx.config.update_ratio, ctx.budget, ctx.rng)
    best = run_step(ctx, "sparse", ctx.config.single_step_epochs,
                    masks=_step_masks(ctx, masks), bn_training=_bn_training(ctx))
    best.selected = selection.count(masks)
    return best


def pruning(ctx: RoundContext) -> Candidate:
    """Retrain from w0, keep the top-k*I kernels by magnitude, zero the rest, fine-tune.

    The device receives a whole sparse model each round (k*I non-zero kernel
    elements), so the update is counted against zeros. Biases and BN are
    trained and sent whole, whatever the bias policy.
    """
    trainer, config = ctx.trainer, ctx.config
    trainer.model.set_weights(ctx.w0)
    trainer.reset_optimizer()
    run_step(ctx, "step 1", config.epochs)
    final = trainer.model.get_weights()
    masks = selection.magnitude(final, ctx.layout.indices(KERNEL), ctx.budget,
                                config.layer_preselect)
    pruned = [np.where(m, w, np.zeros_like(w)) if m is not None else w.copy()
              for w, m in zip(final, masks)]
    trainer.model.set_weights(pruned)
    best = run_step(ctx, "step 2", config.epochs,
                    masks=[m if m is not None else (np.ones(s, bool) if k == BIAS else None)
                           for m, s, k in zip(masks, ctx.layout.shapes, ctx.layout.kinds)],
                    best=_evaluate_current(ctx, "pruned"))
    best.selected = selection.count(masks)
    best.base = "zeros"
    return best


def stc(ctx: RoundContext) -> Candidate:
    """Sparse ternary compression of the warm-started full update (see tf_dpu.ternary).

    The full model trains from the deployed one for `--single_step_epochs`,
    exactly as `--method=fu --fu_init=last_round`; each kernel's top k of
    |change| (in int8 steps on an exported model) moves by ±μ of its layer,
    the rest stays; biases and BatchNorm follow the bias policy as in DPU. No
    fine-tuning: what is lost is what ternary values cost. What was not sent
    is still missing from the deployed model, so the next round's full
    training from it learns it again: this plays the part of STC's error
    feedback (its residual kept for the next round).
    """
    full = full_training(ctx, ctx.start)
    final = full.weights
    indices = ctx.layout.indices(KERNEL)
    masks = ternary.select(final, ctx.start, indices, ctx.int8_scales,
                           ctx.config.update_ratio, ctx.budget)
    moved = ternary.ternarize(final, ctx.start, masks, ctx.int8_scales)
    ctx.trainer.model.set_weights(rewind(ctx, moved, ctx.start, masks))
    candidate = _evaluate_current(ctx, "ternary")
    candidate.selected = selection.count(masks)
    return _with_full(ctx, full, candidate)


METHODS = {"dpu": dpu, "gcpu": dpu, "lcpu": dpu, "rpu": rpu, "pruning": pruning, "fu": fu,
           "stc": stc}
