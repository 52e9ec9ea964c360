"""The multi-round server: start points, re-initialization, send-or-keep, records.

Usage:

    from tf_dpu import RunConfig
    from tf_dpu.rounds import run
    result = run(RunConfig(dataset="mnist", method="dpu", update_ratio=0.01,
                           rounds=3, epochs=5, out_dir="runs/demo"))
    for r in result.rounds:
        print(r["round"], r["test_accuracy"], r["updated_elements"])
"""

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tf_dpu import distribute, frozen_bn, methods, run_folder, selection
from tf_dpu.augment import crop_flip
from tf_dpu.config import PARTIAL_METHODS, RunConfig
from tf_dpu.data import Dataset, RoundSchedule, check_dataset, load_dataset
from tf_dpu.user_models import ModelSource
from tf_dpu.checkpoints import EpochCheckpoints
from tf_dpu.errors import ConfigError
from tf_dpu.target import judge_split
from tf_dpu.outputs import (RunWriter, format_table, load_resume_state, load_weights,
                            round_dir, save_weights)
from tf_dpu.training import Trainer
from tf_dpu.weights import BIAS, KERNEL, STATE, Layout, count_changed, zeros_like

# Methods that keep building on the deployed model, to which the
# re-initialization rule applies.
_REINIT_METHODS = ("dpu", "gcpu", "lcpu", "rpu")


@dataclasses.dataclass
class RunResult:
    """What `run` returns: the resolved config, one record per round, the weights."""

    config: Dict
    rounds: List[Dict]
    deployed: List[np.ndarray]
    w0: List[np.ndarray]
    out_dir: Optional[str]
    trained: object = dataclasses.field(default=None, repr=False)
    twin: object = dataclasses.field(default=None, repr=False)

    @property
    def table(self) -> str:
        return format_table(self.rounds)

    def keras_model(self):
        """The deployed model after the last round, in the Keras it was given in.

        A Keras 3 model (given or loaded from a Keras 3 file) comes back as a
        copy of it in Keras 3; a built-in or `tf_keras` one as `tf_keras`.
        """
        self.trained.set_weights(self.deployed)
        if self.twin is not None:
            return self.twin.keras3_model(self.trained)
        from tf_dpu.user_models import copy_model  # pylint: disable=import-outside-toplevel
        return copy_model(self.trained)


def _print(line: str) -> None:
    print(line, flush=True)


def _tensors(x, y):
    return tf.constant(x), tf.constant(y)


def run(config: RunConfig, progress: Optional[Callable[[str], None]] = _print,
        data: Optional[Dataset] = None, model=None) -> RunResult:
    """Runs all rounds of one method and returns (and, with out_dir, writes) the records.

    Args:
      config: the run settings; validated and resolved here.
      progress: receives progress lines (round, step, epoch, accuracy); None
        for silence.
      data: an already loaded data set (skips `config.dataset`), e.g. for
        notebooks and tests that build their own.
      model: your own model instead of `config.model`: a Keras 3 or `tf_keras`
        model (the run trains a copy; its weights are round 0's starting
        point w0) or a builder `f(input_shape, num_classes, seed) -> model`
        (also what `--fu_init=diff_init` draws new initializations from).
        Checked up front (`tf_dpu.user_models`); what depends on its layers
        (the bias policy of a BatchNorm model) is resolved from it, and its
        name is the run's `model`.

    Returns:
      A `RunResult`; `rounds` holds one dict per round with the fields of
      metrics.json.

    Raises:
      DpuError: bad settings, data or run folder (one-line message), before
        anything is written.
    """
    config = config.resolved(own_model=model is not None)
    # Everything that can be refused is refused before the first write.
    if data is None:
        data = load_dataset(config.dataset, config.validation_samples, config.seed,
                            config.num_classes)
    else:
        data = check_dataset(data, config.num_classes)
    schedule = RoundSchedule(len(data.x_train), config.initial_samples,
                             config.samples_per_round, config.rounds, config.seed)
    split = judge_split(len(data.x_val), config.target_judge_share, config.seed)
    signer = None
    if config.sign_key:
        from tflite_edge.signing import load_signer  # pylint: disable=import-outside-toplevel
        signer = load_signer(config.sign_key)
    elif config.export_tflite and progress:
        progress("warning: no --sign_key: the round patches are unsigned, and devices refuse "
                 "them unless they run with --allow_unsigned")
    task = distribute.cluster_task()
    multi_worker = config.strategy == "multi_worker"
    if not task.is_chief:
        # Every worker runs the whole program (same data, same selections);
        # only the chief reports and writes the run folder. The others keep
        # their own copy under workers/N, which they resume from.
        progress = None
        if config.out_dir:
            config = dataclasses.replace(config, out_dir=os.path.join(
                config.out_dir, run_folder.WORKERS, str(task.index)))
    # The chief leaves workers/ alone: the other processes write there.
    shared = (run_folder.WORKERS,) if multi_worker and task.is_chief else ()
    if config.out_dir:
        run_folder.check(config.out_dir, config.resume, config.overwrite, ignore=shared)
    # Multi-worker collectives must be set up before TensorFlow does anything else.
    strategy = distribute.make_strategy(config.strategy, config.logical_cpus)
    with strategy.scope():
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        tf.random.set_seed(config.seed)
        if config.augment != "none" and len(data.input_shape) != 3:
            raise ConfigError(f"--augment={config.augment} crops and flips images; "
                              f"{config.dataset} samples have shape {data.input_shape}")
        source = ModelSource(config, data.input_shape, data.num_classes, model)
        config = config.with_model(source.has_batch_norm)
        if model is not None:
            config = dataclasses.replace(config, model=source.display_name)
        if config.out_dir:
            run_folder.claim(config.out_dir, config.overwrite, keep=shared)
            if shared and config.overwrite:
                run_folder.prune_workers(config.out_dir, task.workers - task.has_chief)
        return _run(config, strategy, progress or (lambda line: None), data, schedule, signer,
                    source, split)


def _run(config: RunConfig, strategy, say: Callable[[str], None], data: Dataset,
         schedule: RoundSchedule, signer, source: ModelSource, split) -> RunResult:
    model = source.model
    layout = Layout(model)
    augment = None
    if config.augment == "crop_flip":
        fill = data.preprocessing.affine()[1]   # a raw zero, normalised
        augment = lambda batch, key: crop_flip(batch, key, fill)  # noqa: E731
    trainer = Trainer(model, layout, optimizer=config.optimizer,
                      learning_rate=config.learning_rate, momentum=config.momentum,
                      weight_decay=config.weight_decay, batch_size=config.batch_size,
                      seed=config.seed, strategy=strategy, adam_epsilon=config.adam_epsilon,
                      augment=augment)
    w0 = model.get_weights()
    total = layout.size(KERNEL)
    budget = config.budget(total)
    select, judge = split
    x_val, y_val = _tensors(data.x_val[select], data.y_val[select])
    x_judge, y_judge = (_tensors(data.x_val[judge], data.y_val[judge]) if len(judge)
                        else (None, None))
    x_test, y_test = _tensors(data.x_test, data.y_test)
    finished = _finished_rounds(config) if config.resume else []
    if config.strategy == "multi_worker":
        # Each worker resumes from its own copy; a crash may have let one save
        # a round the others did not, and they must all restart at one round.
        finished = finished[:distribute.minimum_over_workers(strategy, len(finished))]
    writer = RunWriter(config.out_dir, config.to_dict()) if config.out_dir else None
    export = None
    if writer and not finished:
        save_weights(model, w0, f"{config.out_dir}/init")
    if config.export_tflite:
        from tf_dpu.deployment import TfliteExport  # pylint: disable=import-outside-toplevel
        export = TfliteExport(model, data.x_test, data.y_test, signer, config.int8_headroom,
                              data.preprocessing, config.tflite_io, config.patch_format)
    say(f"{config.method} on {config.dataset} ({len(data.x_train)} pool, "
        f"{len(data.x_val)} val{f' ({len(judge)} of them judge the target)' if len(judge) else ''}, "
        f"{len(data.x_test)} test), model {config.model}: "
        f"I = {total} kernel elements, budget ceil(k*I) = {budget} per partial round")

    model.set_weights(w0)
    deployed, deployed_val = w0, trainer.accuracy(x_val, y_val)
    deployed_test = trainer.accuracy(x_test, y_test)
    w0_val = deployed_val
    # What the rounds report: the deployed model, or under
    # --reinit_compare=start the best so far on validation (see Reported).
    reported = Reported(deployed_val, deployed_test)
    init_size = schedule.size(0)
    memory: Dict = {}   # carried from round to round by the method (--target_gap's size)
    rounds: List[Dict] = list(finished)
    if finished:
        last = round_dir(config.out_dir, finished[-1]["round"])
        deployed = load_weights(model, last)
        trainer.shuffle_state, saved = load_resume_state(last)
        deployed_val, deployed_test, init_size = (saved["deployed_val"], saved["deployed_test"],
                                                  saved["init_size"])
        reported = Reported(saved["reported_val"], saved["reported_test"])
        memory = dict(saved.get("memory", {}))
        if export:
            _restore_export(export, trainer, model, config, deployed, finished)
        say(f"resuming {config.out_dir} after round {finished[-1]['round']}")
    for r in range(len(finished), config.rounds):
        started = time.time()
        size = schedule.size(r)
        reinit = False
        if r > 0 and config.method in _REINIT_METHODS:
            if config.reinit == "doubling" and size > 2 * init_size:
                reinit = True
            elif config.reinit == "periodic" and r % config.reinit_period == 0:
                reinit = True
        full = config.method == "fu" or (r == 0 and config.initial_deployment == "full")
        x, y = _tensors(data.x_train[schedule.indices(r)], data.y_train[schedule.indices(r)])
        ctx = methods.RoundContext(
            config=config, trainer=trainer, layout=layout, index=r, x=x, y=y,
            x_val=x_val, y_val=y_val, start=w0 if reinit or r == 0 else deployed, w0=w0,
            budget=budget, rng=np.random.RandomState([config.seed, r]),
            fresh_init=lambda r=r: source.build(config.seed + 7919 * (r + 1)).get_weights(),
            progress=say, memory=memory,
            test_accuracy=lambda weights: _accuracy_of(trainer, weights, x_test, y_test),
            x_judge=x_judge, y_judge=y_judge)
        # Mid-round checkpoints are time-based, so workers would hold different
        # epochs; a multi-worker run resumes at round boundaries instead.
        if writer and config.strategy != "multi_worker":
            ctx.checkpoints = EpochCheckpoints(os.path.join(config.out_dir, "checkpoint"), r,
                                               config.checkpoint_seconds)
        if writer:
            ctx.log_epoch = lambda step, epoch, values, r=r: writer.log_epoch(r, step, epoch,
                                                                              values)
        ctx.select = lambda scores: selection.top_k(scores, budget, len(w0))
        # Steps that keep BatchNorm frozen move kernels in the folded (deployed)
        # weights' units; the round's start holds the BatchNorm they keep.
        trainer.set_step_scales(frozen_bn.step_scales(model, ctx.start)
                                if config.bias_policy != "full" else None)
        if export and export.mapping is not None:
            ctx.int8_scales = [None if b is None else b / 127.0 for b in export.bounds()]
        if config.budget_bytes and export and export.mapping is not None:
            cost = export.patch_cost(config.bias_policy)
            ctx.byte_budget = True
            ctx.select = lambda scores, cost=cost: selection.within_bytes(
                scores, cost, config.budget_bytes, len(w0))
            ctx.byte_cap = lambda scores, cost=cost: selection.count(selection.within_bytes(
                scores, cost, config.budget_bytes, len(w0)))
        say(f"round {r}: {size} training samples, start from "
            f"{'w0' if reinit or r == 0 else 'the deployed model'}"
            f"{' (re-initialized: data doubled)' if reinit else ''}")
        best = (methods.full_training(ctx, w0) if full and config.method != "fu"
                else methods.METHODS[config.method](ctx))
        # The reference keeps a re-initialized round if it beats its own start
        # (w0); the product only if it beats what the device has.
        from_start = reinit and config.reinit_compare == "start"
        sent = not best.keep and should_send(
            best.val_accuracy, w0_val if from_start else deployed_val, best.weights)
        if reinit and (sent or from_start):
            # The doubling clock restarts with the restart the device got; a
            # restart that lost keeps the clock, so the next round tries again.
            init_size = size
        record = {"round": r, "train_samples": size, "parameters": model.count_params()}
        if sent:
            # What the device builds the update on: nothing (pruning sends a whole
            # sparse model), w0 (round 0, re-initialized rounds) or its model.
            if best.base == "zeros":
                base = zeros_like(w0)
            else:
                base = w0 if reinit or r == 0 else deployed
            model.set_weights(best.weights)
            deployed, deployed_val = best.weights, best.val_accuracy
            deployed_test = trainer.accuracy(x_test, y_test)
            updated = count_changed(layout, deployed, base, KERNEL)
            changed_biases = count_changed(layout, deployed, base, BIAS, STATE)
        else:
            updated = changed_biases = 0
        reason = "within the target gap" if best.keep else "worse on validation"
        carried = reported.update(deployed_val, deployed_test,
                                  carry=config.reinit_compare == "start")
        record.update({
            "val_accuracy": reported.val, "test_accuracy": reported.test,
            "carried_forward": carried,
            "updated_elements": updated, "total_elements": total,
            "changed_biases": changed_biases, "reinitialized": reinit, "sent": sent,
            "seconds": round(time.time() - started, 3),
            # Where the round's time went (the rest: selection and evaluation).
            "training_seconds": round(ctx.training_seconds, 3),
            "method": config.method, "full_round": full,
            "selected_elements": best.selected if not full else total,
            "candidate_val_accuracy": best.val_accuracy,
            "best_step": best.step, "best_epoch": best.epoch,
            **best.info,
        })
        if export:
            exported = time.time()
            record.update(export.export(round_dir(config.out_dir, r), r, deployed, sent,
                                        data.x_train[schedule.indices(0)]))
            record["export_seconds"] = round(time.time() - exported, 3)
            if r == 0:
                _bound_training(export, trainer, config)
            # Round 0 ships a whole file even when its training lost to w0.
            record["sent"] = record["sent"] or record["sent_bytes"] > 0
            say(f"round {r}: int8 test {record['tflite_test_accuracy']:.4f}, "
                f"{record['sent_bytes']} bytes sent (model file {record['tflite_bytes']})")
        if "full_test_accuracy" in record:
            # Negative: the device is behind full retraining by that many points.
            record["full_gap_points"] = round(100 * (record["test_accuracy"]
                                                     - record["full_test_accuracy"]), 4)
            if "target_gap_points" in record:
                # The target's gap as validation judged it, now on test (same sign).
                record["target_gap_test_points"] = -record["full_gap_points"]
        rounds.append(record)
        say(f"round {r}: val {reported.val:.4f} test {reported.test:.4f} "
            f"{'(previous round carried forward) ' if carried else ''}"
            f"updated {updated}/{total} biases {changed_biases} "
            f"{'sent' if sent else 'NOT sent (device keeps its model: ' + reason + ')'}"
            f" [{record['seconds']:.1f} s]")
        if writer:
            keras3_out = None if source.twin is None else (
                lambda folder: source.twin.save(model, folder))
            writer.write_round(model, deployed, rounds, trainer.shuffle_state, {
                "deployed_val": deployed_val, "deployed_test": deployed_test,
                "init_size": init_size, "reported_val": reported.val,
                "reported_test": reported.test, "memory": memory}, keras3_out)
            if ctx.checkpoints:
                ctx.checkpoints.clear()
    if writer:
        writer.write_plot(rounds)
        writer.close()
    return RunResult(config.to_dict(), rounds, deployed, w0, config.out_dir, model, source.twin)


def _accuracy_of(trainer, weights, x, y) -> float:
    """Test accuracy of `weights`, leaving the model's own weights as they were."""
    kept = trainer.model.get_weights()
    trainer.model.set_weights(weights)
    try:
        return trainer.accuracy(x, y)
    finally:
        trainer.model.set_weights(kept)


class Reported:
    """The accuracy a round reports.

    By default the deployed model's. Under `--reinit_compare=start` a
    re-initialized round may deploy a model worse than the last one (it only
    has to beat w0), and the reference then reports the previous round's
    numbers instead ("avoid the accuracy degradation due to the
    re-initialization": the device keeps using its better model until the
    new line of models beats it on validation); `update` does the same.
    """

    def __init__(self, val: float, test: float):
        self.val, self.test = float(val), float(test)

    def update(self, val: float, test: float, carry: bool) -> bool:
        """Takes the deployed model's figures; True if the previous ones are kept."""
        if carry and val < self.val:
            return True
        self.val, self.test = float(val), float(test)
        return False


def should_send(candidate_val: float, deployed_val: float, weights) -> bool:
    """Whether a round's best candidate replaces the device's model.

    The device keeps its model only when the candidate is worse on
    validation; a tie goes to the candidate, trained on more data (the
    reference reports rounds the same way). A diverged step can leave NaN or
    infinity in any candidate (even the rewound model); such a model is never
    sent.
    """
    return candidate_val >= deployed_val and all(np.isfinite(w).all() for w in weights)


def _bound_training(export, trainer: Trainer, config: RunConfig) -> None:
    """After round 0's int8 file exists, later rounds train inside its scales."""
    if config.int8_bounds:
        trainer.set_bounds(export.bounds())
    if config.qat:
        trainer.set_forward(export.qat_model())


def _finished_rounds(config: RunConfig) -> List[Dict]:
    """The records of the rounds a previous run in out_dir finished (none: start afresh)."""
    path = os.path.join(config.out_dir, "metrics.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot resume: {path} is unreadable ({e})") from None
    differs = config.same_run(saved.get("config", {}))
    if differs:
        raise ConfigError(f"cannot resume: the run in {config.out_dir} has another "
                          f"--{differs} ({saved['config'].get(differs)!r})")
    rounds = saved.get("rounds", [])
    for record in rounds:
        folder = round_dir(config.out_dir, record["round"])
        if not os.path.exists(os.path.join(folder, "resume.npz")):
            raise ConfigError(f"cannot resume: {folder} has no resume state")
    return rounds


def _restore_export(export, trainer: Trainer, model, config: RunConfig, deployed,
                    finished: List[Dict]) -> None:
    """Rebuilds the int8 deployment from round 0's and the last round's files."""
    from tflite_edge.model_file import ModelFile  # pylint: disable=import-outside-toplevel
    from tflite_edge.convert import build_map  # pylint: disable=import-outside-toplevel
    first = round_dir(config.out_dir, 0)
    model.set_weights(load_weights(model, first))
    with open(os.path.join(first, "model.tflite"), "rb") as f:
        export.mapping = build_map(model, ModelFile(f.read()),
                                   export.input_affine)  # verifies it again
    with open(os.path.join(round_dir(config.out_dir, finished[-1]["round"]),
                           "model.tflite"), "rb") as f:
        export.file = f.read()
    export.weights = [w.copy() for w in deployed]
    export.accuracy = finished[-1]["tflite_test_accuracy"]
    model.set_weights(deployed)
    _bound_training(export, trainer, config)


__all__ = ["run", "RunResult", "PARTIAL_METHODS", "should_send"]
