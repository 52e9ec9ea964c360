"""Command line: run Deep Partial Updating (or a baseline) over rounds.

    python -m tf_dpu.train --flagfile=flags/quickstart.flags
    python -m tf_dpu.train --flagfile=flags/reference_mnist.flags --method=rpu --seed=2

A thin layer: flags become a `RunConfig`, `tf_dpu.rounds.run` does the work.
Any bad input ends with one line on stderr and exit status 2.
"""

import json
import sys

from absl import app, flags

from tf_dpu import config as cfg
from tf_dpu import flag_files, run_folder
from tf_dpu.data import RoundSchedule, load_dataset
from tf_dpu.errors import DpuError
from tf_dpu.target import judge_split
from tflite_edge import native_output
from tflite_edge.errors import PatchError

_D = cfg.RunConfig()  # the defaults live in one place: RunConfig

_DATASET = flags.DEFINE_string("dataset", _D.dataset, "mnist | mnist1d | digits | npz:PATH")
_MODEL = flags.DEFINE_string(
    "model", _D.model, "mlp | cnn | vgg | mobilenet | ds_cnn | resnet8 | resnet<6n+2> | a Keras "
    "model file (PATH.keras saved by Keras 3 or tf_keras, PATH.h5)")
_WIDTH = flags.DEFINE_float("width_multiplier", _D.width_multiplier,
                            "MobileNet's alpha: every layer's filters times this",
                            lower_bound=0.0, upper_bound=4.0)
_BN_MOMENTUM = flags.DEFINE_float(
    "bn_momentum", _D.bn_momentum, "BatchNorm moving-average momentum (default: 0.9, PyTorch's "
    "and the reference's, for built-in models; a --model file keeps its own unless this is "
    "given)", lower_bound=0.0, upper_bound=1.0)
_BN_EPSILON = flags.DEFINE_float("bn_epsilon", _D.bn_epsilon, "BatchNorm epsilon of the built-in "
                                 "models (default 1e-5: PyTorch's; Keras' is 1e-3); a --model "
                                 "file's is part of the model and is refused here", lower_bound=0.0)
_METHOD = flags.DEFINE_enum("method", _D.method, cfg.METHODS, "the update method")
_INITIALIZER = flags.DEFINE_enum(
    "initializer", _D.initializer, ("glorot", "torch"), "glorot (Keras default) | torch "
    "(PyTorch's default, U(±1/sqrt(fan_in)) kernels and biases, as the reference code)")
_UPDATE_RATIO = flags.DEFINE_float(
    "update_ratio", None, f"k: fraction of kernel elements a partial round changes "
    f"(default {_D.update_ratio}); excludes --budget_bytes")
_ROUNDS = flags.DEFINE_integer("rounds", _D.rounds, "number of rounds", lower_bound=1)
_INITIAL = flags.DEFINE_integer("initial_samples", _D.initial_samples, "|D^0|", lower_bound=1)
_PER_ROUND = flags.DEFINE_integer("samples_per_round", _D.samples_per_round,
                                  "new training samples per round", lower_bound=0)
_VALIDATION = flags.DEFINE_integer("validation_samples", _D.validation_samples,
                                   "test samples set aside for validation", lower_bound=1)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "classes of the model (default: those of the training pool; "
    "needed when test labels include classes the pool never shows)", lower_bound=2)
_EPOCHS = flags.DEFINE_integer("epochs", _D.epochs, "epochs per step (two-step methods)",
                               lower_bound=1)
_SINGLE_EPOCHS = flags.DEFINE_integer(
    "single_step_epochs", None, "epochs of one-step methods (FU, RPU, full round 0); "
    "default 2 x --epochs, the same compute as two steps", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", _D.batch_size, "batch size", lower_bound=1)
_OPTIMIZER = flags.DEFINE_enum("optimizer", _D.optimizer, cfg.OPTIMIZERS,
                               "adam | sgd (Nesterov)")
_LR = flags.DEFINE_float("learning_rate", _D.learning_rate, "initial learning rate")
_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", _D.lr_schedule, cfg.LR_SCHEDULES,
    "auto: thirds for adam, cosine for sgd; thirds: x --lr_gamma at 1/3 and 2/3 of the "
    "epochs; step: x --lr_gamma every epochs // 3 epochs (PyTorch's StepLR, as the "
    "reference; it decays 4 times in 5 epochs)")
_LR_GAMMA = flags.DEFINE_float("lr_gamma", _D.lr_gamma, "decay factor of the thirds and step schedules "
                               "(the reference: 0.1, 0.2 for VGG)", lower_bound=0.0,
                               upper_bound=1.0)
_ADAM_EPSILON = flags.DEFINE_float(
    "adam_epsilon", _D.adam_epsilon, "Adam's epsilon, added to the bias-corrected sqrt(v) "
    "as PyTorch does", lower_bound=0.0, upper_bound=1.0)
_MOMENTUM = flags.DEFINE_float("momentum", _D.momentum, "SGD momentum", lower_bound=0.0)
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", _D.weight_decay, "L2 on all parameters",
                                   lower_bound=0.0)
_MIX = flags.DEFINE_float("contribution_mix", None,
                          "λ, weight of the global contribution (default 0.5; "
                          "fixed to 1 by gcpu, 0 by lcpu)", lower_bound=0.0, upper_bound=1.0)
_REINIT = flags.DEFINE_enum(
    "reinit", _D.reinit, cfg.REINIT_RULES, "auto: doubling for dpu and lcpu after a partial "
    "round 0, off otherwise")
_REINIT_COMPARE = flags.DEFINE_enum(
    "reinit_compare", _D.reinit_compare, cfg.REINIT_COMPARES,
    "a re-initialized round is deployed if it beats: deployed (the device's model; a loss "
    "retries the restart next round) | start (w0, as the reference, which then reports the "
    "previous round while the new models are worse)")
_LAYER_PRESELECT = flags.DEFINE_float(
    "layer_preselect", _D.layer_preselect, "DPU and pruning: keep each layer's top fraction "
    "by score before the global top-k (the reference: 0.65)", lower_bound=0.0, upper_bound=1.0)
_VALUE_GRID = flags.DEFINE_enum(
    "value_grid", _D.value_grid, cfg.VALUE_GRIDS, "the values DPU sends: exact (step 2's "
    "fine-tuned values) or ternary (step 2 projected after every epoch onto the deployed "
    "model ± μ per layer, μ in whole int8 steps on an exported model: the values cost about "
    "a bit each)")
_RANK = flags.DEFINE_enum(
    "rank", _D.rank, cfg.RANKINGS, "DPU's order: contribution (the paper's) or per_bit "
    "(contribution per estimated patch bit; elements whose int8 value would not change go "
    "last; needs --export_tflite)")
_AUGMENT = flags.DEFINE_enum("augment", _D.augment, cfg.AUGMENTATIONS,
                             "training augmentation of images: crop_flip = random crops with "
                             "4-pixel padding and horizontal flips (the reference's CIFAR)")
_REINIT_PERIOD = flags.DEFINE_integer("reinit_period", _D.reinit_period,
                                      "rounds between re-initializations (periodic)",
                                      lower_bound=0)
_BIAS = flags.DEFINE_enum("bias_policy", _D.bias_policy, cfg.BIAS_POLICIES,
                          "how biases and BatchNorm update (auto: frozen for an exported model "
                          "with BatchNorm, full otherwise)")
_INITIAL_DEPLOYMENT = flags.DEFINE_enum(
    "initial_deployment", _D.initial_deployment, cfg.INITIAL_DEPLOYMENTS,
    "full: round 0 trains and ships the whole model; partial: the reference's "
    "partial update of the random initialization")
_FU_INIT = flags.DEFINE_enum("fu_init", _D.fu_init, cfg.FU_INITS, "where FU starts")
_ITERATIVE = flags.DEFINE_bool("iterative", _D.iterative,
                               "single-round variant: shrink the selection x0.8 per stage")
_ITERATIVE_DECAY = flags.DEFINE_float("iterative_decay", _D.iterative_decay,
                                      "shrink factor per stage")
_ITERATIVE_EPOCHS = flags.DEFINE_integer("iterative_epochs", None,
                                         "fine-tuning epochs per shrinking stage (default "
                                         "--epochs, as the reference)", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", _D.seed, "seed of init, schedule and shuffling")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", _D.deterministic,
                                   "TensorFlow op determinism (same seed, same bits)")
_EXPORT = flags.DEFINE_bool("export_tflite", False,
                            "write round_NNN/model.tflite (int8) and update.patch per round")
_TFLITE_IO = flags.DEFINE_enum("tflite_io", _D.tflite_io, cfg.TFLITE_IO,
                               "type of the exported file's input and output (Coral's examples "
                               "feed uint8)")
_PATCH_FORMAT = flags.DEFINE_enum(
    "patch_format", str(_D.patch_format), ["3", "4", "5"], "format of the exported patches: 5 "
    "(column and saturating codes), or 4 or 3 for devices whose appliers read nothing newer")
_HEADROOM = flags.DEFINE_float(
    "int8_headroom", 1.5, "widen round 0's int8 weight scales by this factor, so later "
    "partial updates have room to grow without clipping", lower_bound=1.0, upper_bound=16.0)
_INT8_BOUNDS = flags.DEFINE_bool(
    "int8_bounds", _D.int8_bounds, "with --export_tflite: after round 0, train inside the "
    "int8 file's range (127 x scale per channel), so nothing clips; --noint8_bounds trains "
    "freely (accuracy comparable with runs without export; the file clips)")
_QAT = flags.DEFINE_bool(
    "qat", False, "after round 0, train and validate through the deployed int8 model "
    "(frozen weight scales and activation ranges, tfmot wrappers); needs --export_tflite")
_BUDGET_BYTES = flags.DEFINE_integer(
    "budget_bytes", None, "instead of --update_ratio: update as many elements as fit an "
    "int8 patch of at most this many bytes (headers included); needs --export_tflite",
    lower_bound=200)
_TARGET_GAP = flags.DEFINE_float(
    "target_gap", None, "instead of a fixed k: each round send the smallest update whose "
    "model is within this many points of validation accuracy of the round's full update "
    "(step 1), or nothing if the deployed model is (dpu, gcpu, lcpu)", lower_bound=0.0,
    upper_bound=100.0)
_TARGET_CONFIDENCE = flags.DEFINE_float(
    "target_confidence", 0.0, "--target_gap: standard errors of the paired validation gap "
    "added before comparing with the target (0: the point estimate)", lower_bound=0.0,
    upper_bound=5.0)
_MAX_UPDATE_RATIO = flags.DEFINE_float(
    "max_update_ratio", 0.2, "--target_gap: the most kernel elements a round may change, as "
    "a fraction (--budget_bytes caps the bytes too)", lower_bound=0.0, upper_bound=1.0)
_TARGET_STEPS = flags.DEFINE_integer(
    "target_search_steps", 3, "--target_gap: the most sizes fine-tuned per round (each costs "
    "--epochs epochs)", lower_bound=1)
_TARGET_JUDGE_SHARE = flags.DEFINE_float(
    "target_judge_share", 0.0, "--target_gap: the share of the validation samples held out "
    "to judge the gap only (the rest pick each step's best epoch and whether a round is "
    "sent); 0: the same samples do both", lower_bound=0.0, upper_bound=1.0)
_SIGN_KEY = flags.DEFINE_string("sign_key", None,
                                "Ed25519 private key (PEM) that signs every patch")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/latest", "where the run is written (a new or "
                               "empty folder, or one holding a run with --resume/--overwrite)")
_QUIET = flags.DEFINE_bool("quiet", False, "no per-epoch progress lines")
_VERBOSE = flags.DEFINE_bool("verbose", False, "also show what TensorFlow and TensorFlow "
                             "Lite print natively (start-up, converter, delegates)")
_CHECKPOINT_SECONDS = flags.DEFINE_float(
    "checkpoint_seconds", 30.0, "save the training state inside a round at most this often "
    "(0: after every epoch), so --resume continues from the last saved epoch", lower_bound=0.0)
_RESUME = flags.DEFINE_bool(
    "resume", False, "continue the run in --out_dir from its last finished round and saved "
    "epoch, with the same settings (the same metrics and patches as an uninterrupted run)")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "replace the run in --out_dir: it is removed whole before anything "
    "is written")
_STRATEGY = flags.DEFINE_enum(
    "strategy", _D.strategy, cfg.STRATEGIES, "default | mirrored (local GPUs or "
    "--logical_cpus) | multi_worker (one process per worker; the cluster comes from TF_CONFIG)")
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", _D.logical_cpus, "with --strategy=mirrored: split the CPU into this many "
    "devices (0: use the GPUs)", lower_bound=0, upper_bound=64)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "check the settings, the data and --out_dir, "
                             "print the resolved settings as JSON and exit without training")

flags.mark_flags_as_mutual_exclusive(["update_ratio", "budget_bytes"])
flags.mark_bool_flags_as_mutual_exclusive(["resume", "overwrite"])
flags.register_multi_flags_validator(
    ["qat", "export_tflite"], lambda f: not f["qat"] or f["export_tflite"],
    "--qat trains against the deployed int8 model; add --export_tflite")
flags.register_multi_flags_validator(
    ["budget_bytes", "export_tflite"], lambda f: f["budget_bytes"] is None or f["export_tflite"],
    "--budget_bytes counts the bytes of the int8 patch; add --export_tflite")
flags.register_multi_flags_validator(
    ["sign_key", "export_tflite"], lambda f: not f["sign_key"] or f["export_tflite"],
    "--sign_key signs exported patches; add --export_tflite")
flags.register_multi_flags_validator(
    ["logical_cpus", "strategy"], lambda f: not f["logical_cpus"] or f["strategy"] == "mirrored",
    "--logical_cpus splits the CPU for --strategy=mirrored only")
flags.register_multi_flags_validator(
    ["reinit", "reinit_period"], lambda f: f["reinit"] != "periodic" or f["reinit_period"] >= 1,
    "--reinit=periodic needs --reinit_period >= 1")


def config_from_flags() -> cfg.RunConfig:
    return cfg.RunConfig(
        dataset=_DATASET.value, model=_MODEL.value, method=_METHOD.value,
        width_multiplier=_WIDTH.value, bn_momentum=_BN_MOMENTUM.value,
        bn_epsilon=_BN_EPSILON.value, tflite_io=_TFLITE_IO.value,
        patch_format=int(_PATCH_FORMAT.value),
        initializer=_INITIALIZER.value,
        update_ratio=_D.update_ratio if _UPDATE_RATIO.value is None else _UPDATE_RATIO.value,
        rounds=_ROUNDS.value, num_classes=_NUM_CLASSES.value, overwrite=_OVERWRITE.value,
        initial_samples=_INITIAL.value, samples_per_round=_PER_ROUND.value,
        validation_samples=_VALIDATION.value, epochs=_EPOCHS.value,
        single_step_epochs=_SINGLE_EPOCHS.value, batch_size=_BATCH.value,
        optimizer=_OPTIMIZER.value, learning_rate=_LR.value, lr_schedule=_SCHEDULE.value,
        lr_gamma=_LR_GAMMA.value, adam_epsilon=_ADAM_EPSILON.value,
        reinit_compare=_REINIT_COMPARE.value, layer_preselect=_LAYER_PRESELECT.value,
        augment=_AUGMENT.value, int8_bounds=_INT8_BOUNDS.value, rank=_RANK.value,
        value_grid=_VALUE_GRID.value,
        momentum=_MOMENTUM.value, weight_decay=_WEIGHT_DECAY.value,
        contribution_mix=_MIX.value, reinit=_REINIT.value,
        reinit_period=_REINIT_PERIOD.value, bias_policy=_BIAS.value,
        initial_deployment=_INITIAL_DEPLOYMENT.value, fu_init=_FU_INIT.value,
        iterative=_ITERATIVE.value, iterative_decay=_ITERATIVE_DECAY.value,
        iterative_epochs=_ITERATIVE_EPOCHS.value, seed=_SEED.value,
        deterministic=_DETERMINISTIC.value, export_tflite=_EXPORT.value,
        int8_headroom=_HEADROOM.value, budget_bytes=_BUDGET_BYTES.value, qat=_QAT.value,
        target_gap=_TARGET_GAP.value, target_confidence=_TARGET_CONFIDENCE.value,
        max_update_ratio=_MAX_UPDATE_RATIO.value, target_search_steps=_TARGET_STEPS.value,
        target_judge_share=_TARGET_JUDGE_SHARE.value,
        sign_key=_SIGN_KEY.value, out_dir=_OUT_DIR.value or None, resume=_RESUME.value,
        checkpoint_seconds=_CHECKPOINT_SECONDS.value, strategy=_STRATEGY.value,
        logical_cpus=_LOGICAL_CPUS.value)


def fail(message: str) -> None:
    """Ends the program with one line on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl's parser, with one-line errors and flag files also found by name."""
    try:
        argv = [argv[0]] + [flag_files.resolve_argument(a) for a in argv[1:]]
        return flags.FLAGS(argv)
    except (flags.Error, DpuError) as e:
        fail(str(e))
    return None


def _import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 muted.

    TensorFlow's native libraries print start-up lines (oneDNN, CUDA probes)
    to stderr before any log-level setting applies; a command line tool
    should not bury its own messages under them. Import errors still surface,
    because stderr is restored before the exception propagates.
    """
    with native_output.muted():
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected argument(s): {' '.join(argv[1:])} (flags start with --)")
    native_output.set_verbose(_VERBOSE.value)
    try:
        config = config_from_flags().resolved()
        # Data and folder problems surface before the slow TensorFlow import,
        # and before anything is written.
        data = load_dataset(config.dataset, config.validation_samples, config.seed,
                            config.num_classes)
        RoundSchedule(len(data.x_train), config.initial_samples, config.samples_per_round,
                      config.rounds, config.seed)
        judge_split(len(data.x_val), config.target_judge_share, config.seed)
        if config.out_dir and config.strategy != "multi_worker":   # workers: in run()
            run_folder.check(config.out_dir, config.resume, config.overwrite)
        _import_tensorflow_quietly()
        if _DRY_RUN.value:
            # The model too: a built-in one is built for the data, a user's
            # file loaded and checked.
            from tf_dpu.user_models import ModelSource  # pylint: disable=import-outside-toplevel
            source = ModelSource(config, data.input_shape, data.num_classes)
            print(json.dumps(config.with_model(source.has_batch_norm).to_dict(), indent=2))
            return
        from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
        quiet = _QUIET.value
        result = run(config, data=data, progress=(lambda line: None) if quiet else
                     (lambda line: print(line, flush=True)))
    except (DpuError, PatchError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; finished rounds are in --out_dir")
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    print()
    print(result.table)
    if result.out_dir:
        per_round = ["model.weights.h5"] + (["model.keras"] if result.twin else []) + (
            ["model.tflite", "update.patch"] if result.config["export_tflite"] else [])
        print(f"\nwrote {result.out_dir}/metrics.json, metrics.csv, accuracy.png, "
              f"tensorboard/, round_NNN/{{{','.join(per_round)}}}")


def run_main():
    """Console-script entry point (`tf-dpu-train`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run_main()
