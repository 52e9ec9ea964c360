"""Settings of one multi-round run, with their validation.

The library takes a `RunConfig`; only `tf_dpu.train` reads flags and builds one.
"""

import dataclasses
import math
from typing import Optional

from tf_dpu.errors import ConfigError

METHODS = ("dpu", "gcpu", "lcpu", "rpu", "pruning", "fu", "stc")
PARTIAL_METHODS = ("dpu", "gcpu", "lcpu", "rpu", "pruning", "stc")
MODELS_FIXED = ("mlp", "cnn", "vgg", "mobilenet", "ds_cnn", "resnet8")
MODEL_FILES = (".keras", ".h5")   # a user's own Keras model
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("auto", "thirds", "step", "cosine", "constant")
REINIT_RULES = ("auto", "doubling", "periodic", "off")
REINIT_COMPARES = ("deployed", "start")
AUGMENTATIONS = ("none", "crop_flip")
RANKINGS = ("contribution", "per_bit")
VALUE_GRIDS = ("exact", "ternary")
BIAS_POLICIES = ("auto", "full", "masked", "frozen")
TFLITE_IO = ("int8", "uint8")
INITIAL_DEPLOYMENTS = ("full", "partial")
FU_INITS = ("same_init", "last_round", "diff_init")
STRATEGIES = ("default", "mirrored", "multi_worker")

# Built-in architectures with BatchNorm (and any resnet<6n+2>).
_BATCH_NORM_MODELS = ("vgg", "mobilenet", "ds_cnn", "resnet8")

# The contribution mix is what distinguishes DPU from its two ablations.
_FIXED_MIX = {"gcpu": 1.0, "lcpu": 0.0}


def _one_of(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"--{name}={value!r} is not one of {', '.join(allowed)}")


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"--{name} must be a positive integer, got {value!r}")


def is_resnet(name: str) -> bool:
    """True for `resnet<6n+2>` names such as resnet20 or resnet56."""
    if not name.startswith("resnet") or not name[6:].isdigit():
        return False
    depth = int(name[6:])
    return depth >= 8 and (depth - 2) % 6 == 0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; the defaults are the README's quick start.

    `None` and `"auto"` fields are resolved per method by `resolved()`.
    """

    dataset: str = "mnist"
    model: str = "mlp"
    width_multiplier: float = 0.25
    method: str = "dpu"
    initializer: str = "glorot"
    update_ratio: float = 0.01
    rounds: int = 5
    initial_samples: int = 500
    samples_per_round: int = 500
    validation_samples: int = 300
    epochs: int = 10
    single_step_epochs: Optional[int] = None
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 5e-3
    lr_schedule: str = "auto"
    lr_gamma: float = 0.1
    adam_epsilon: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    contribution_mix: Optional[float] = None
    reinit: str = "auto"
    reinit_period: int = 0
    reinit_compare: str = "deployed"
    layer_preselect: float = 1.0
    rank: str = "contribution"
    value_grid: str = "exact"
    augment: str = "none"
    bias_policy: str = "auto"
    initial_deployment: str = "full"
    fu_init: str = "same_init"
    iterative: bool = False
    iterative_decay: float = 0.8
    iterative_epochs: Optional[int] = None
    seed: int = 0
    deterministic: bool = True
    export_tflite: bool = False
    tflite_io: str = "int8"
    patch_format: int = 5
    # None: the built-in models' 0.9 and 1e-5 (PyTorch's, as the reference);
    # a model of the user's keeps its own unless --bn_momentum is given.
    bn_momentum: Optional[float] = None
    bn_epsilon: Optional[float] = None
    qat: bool = False
    budget_bytes: Optional[int] = None
    target_gap: Optional[float] = None
    target_confidence: float = 0.0
    max_update_ratio: float = 0.2
    target_search_steps: int = 3
    target_judge_share: float = 0.0
    int8_headroom: float = 1.5
    int8_bounds: bool = True
    sign_key: Optional[str] = None
    out_dir: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    num_classes: Optional[int] = None
    checkpoint_seconds: float = 30.0
    strategy: str = "default"
    logical_cpus: int = 0

    def resolved(self, own_model: bool = False) -> "RunConfig":
        """Returns a validated copy with every automatic choice made explicit.

        Args:
          own_model: the model comes from the Python API rather than `model`,
            so what depends on its layers waits for `with_model`.
        """
        self.validate()
        mix = self.contribution_mix
        if self.method in _FIXED_MIX:
            fixed = _FIXED_MIX[self.method]
            if mix is not None and mix != fixed:
                raise ConfigError(
                    f"--method={self.method} fixes --contribution_mix to {fixed:g}, "
                    f"got {mix:g}")
            mix = fixed
        elif mix is None:
            mix = 0.5
        reinit = self.reinit
        if reinit == "auto":
            # The reference re-initializes DPU and LCPU when the data doubles;
            # GCPU and RPU run without it; pruning and FU have their own start.
            # After a fully deployed round 0 a restart from w0 would throw the
            # device's trained model away for a partial update of a random
            # network, so the rule is off there.
            reinit = ("doubling" if self.method in ("dpu", "lcpu")
                      and self.initial_deployment == "partial" and self.target_gap is None
                      else "off")
        schedule = self.lr_schedule
        if schedule == "auto":
            schedule = "thirds" if self.optimizer == "adam" else "cosine"
        single = self.single_step_epochs or 2 * self.epochs
        resolved = dataclasses.replace(self, contribution_mix=mix, reinit=reinit,
                                       lr_schedule=schedule, single_step_epochs=single,
                                       iterative_epochs=self.iterative_epochs or self.epochs)
        if not self.model_file and not own_model:
            # A built-in model's layers are known now; a user's once it is loaded.
            resolved = dataclasses.replace(
                resolved, bn_momentum=0.9 if self.bn_momentum is None else self.bn_momentum,
                bn_epsilon=1e-5 if self.bn_epsilon is None else self.bn_epsilon)
            resolved = resolved.with_model(self.model in _BATCH_NORM_MODELS
                                           or is_resnet(self.model))
        elif self.bn_epsilon is not None:
            raise ConfigError("--bn_epsilon is part of what your model computes; set it in the "
                              "model's BatchNormalization layers (--bn_momentum, a training "
                              "setting, does apply to them)")
        return resolved

    def with_model(self, has_batch_norm: bool) -> "RunConfig":
        """The settings that depend on the model's layers, resolved and checked.

        An exported model with BatchNorm keeps its BatchNorm parameters frozen
        after round 0 by default (`--bias_policy=auto`): the converter folds
        them into the kernels, so a changed gamma or variance would change a
        whole channel of the int8 file. `full` trains them and sends what
        changes (measured: the patch grows to most of the file); `masked`
        would let them compete element by element with kernels and is refused.
        """
        policy = self.bias_policy
        if policy == "auto":
            policy = "frozen" if self.export_tflite and has_batch_norm else "full"
        if self.export_tflite and has_batch_norm:
            if policy == "masked":
                raise ConfigError("--bias_policy=masked would let BatchNorm parameters compete "
                                  "with single kernel elements, but the int8 file folds each "
                                  "into a whole channel; use frozen (the default for exported "
                                  "BatchNorm models) or full")
            if self.qat:
                raise ConfigError("--qat does not support models with BatchNorm (the device's "
                                  "kernels are folded with it)")
            if self.budget_bytes and policy != "frozen":
                raise ConfigError("--budget_bytes with a BatchNorm model needs "
                                  "--bias_policy=frozen (a BatchNorm change costs a channel)")
        return dataclasses.replace(self, bias_policy=policy)

    def validate(self) -> None:
        """Raises ConfigError with a one-line message on the first bad setting."""
        _one_of("method", self.method, METHODS)
        if self.model not in MODELS_FIXED and not is_resnet(self.model) and not self.model_file:
            raise ConfigError(
                f"--model={self.model!r} is not one of {', '.join(MODELS_FIXED)}, "
                "resnet<6n+2> (resnet20, resnet56, ...), or a Keras model file (.keras, .h5)")
        if not 0.0 < self.width_multiplier <= 4.0:
            raise ConfigError(f"--width_multiplier must be in (0, 4], got "
                              f"{self.width_multiplier!r}")
        if not isinstance(self.update_ratio, (int, float)) or not (
                0.0 < self.update_ratio <= 1.0) or math.isnan(self.update_ratio):
            raise ConfigError(
                f"--update_ratio must be in (0, 1], got {self.update_ratio!r}")
        for name in ("rounds", "initial_samples", "epochs", "batch_size"):
            _positive(name, getattr(self, name))
        for name in ("single_step_epochs", "iterative_epochs"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if not isinstance(self.samples_per_round, int) or self.samples_per_round < 0:
            raise ConfigError(
                f"--samples_per_round must be >= 0, got {self.samples_per_round!r}")
        if not isinstance(self.validation_samples, int) or self.validation_samples < 1:
            raise ConfigError(
                f"--validation_samples must be >= 1, got {self.validation_samples!r}")
        _one_of("initializer", self.initializer, ("glorot", "torch"))
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not self.learning_rate > 0 or math.isinf(self.learning_rate):
            raise ConfigError(
                f"--learning_rate must be a positive number, got {self.learning_rate!r}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"--lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if not 0.0 < self.adam_epsilon <= 1.0:
            raise ConfigError(f"--adam_epsilon must be in (0, 1], got {self.adam_epsilon!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0 or math.isinf(self.weight_decay):
            raise ConfigError(f"--weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.contribution_mix is not None and not (
                0.0 <= self.contribution_mix <= 1.0):
            raise ConfigError(
                f"--contribution_mix must be in [0, 1], got {self.contribution_mix!r}")
        _one_of("reinit", self.reinit, REINIT_RULES)
        if self.reinit == "periodic" and self.reinit_period < 1:
            raise ConfigError("--reinit=periodic needs --reinit_period >= 1")
        _one_of("reinit_compare", self.reinit_compare, REINIT_COMPARES)
        if not 0.0 < self.layer_preselect <= 1.0:
            raise ConfigError(f"--layer_preselect must be in (0, 1], got "
                              f"{self.layer_preselect!r}")
        _one_of("augment", self.augment, AUGMENTATIONS)
        _one_of("rank", self.rank, RANKINGS)
        if self.rank == "per_bit":
            if not self.export_tflite:
                raise ConfigError("--rank=per_bit costs elements in the int8 patch; add "
                                  "--export_tflite")
            if self.method not in ("dpu", "gcpu", "lcpu"):
                raise ConfigError(f"--rank=per_bit ranks DPU's scores; not for {self.method}")
        _one_of("value_grid", self.value_grid, VALUE_GRIDS)
        if self.value_grid != "exact":
            if self.method not in ("dpu", "gcpu", "lcpu"):
                raise ConfigError(f"--value_grid=ternary holds DPU's step 2 to ±μ per layer; "
                                  f"not for {self.method} (--method=stc sends ternary values "
                                  "without fine-tuning)")
            for other, value in (("target_gap", self.target_gap is not None),
                                 ("iterative", self.iterative),
                                 ("budget_bytes", self.budget_bytes is not None)):
                if value:
                    raise ConfigError(f"--value_grid=ternary cannot be combined with --{other}")
        _one_of("bias_policy", self.bias_policy, BIAS_POLICIES)
        _one_of("initial_deployment", self.initial_deployment, INITIAL_DEPLOYMENTS)
        _one_of("fu_init", self.fu_init, FU_INITS)
        if not 0.0 < self.iterative_decay < 1.0:
            raise ConfigError(
                f"--iterative_decay must be in (0, 1), got {self.iterative_decay!r}")
        if self.iterative and self.method not in ("dpu", "gcpu", "lcpu"):
            raise ConfigError("--iterative applies to dpu, gcpu and lcpu only")
        _one_of("tflite_io", self.tflite_io, TFLITE_IO)
        if self.tflite_io != "int8" and not self.export_tflite:
            raise ConfigError(f"--tflite_io={self.tflite_io} sets the int8 file's input and "
                              "output type; add --export_tflite")
        if self.patch_format not in (3, 4, 5):
            raise ConfigError(f"--patch_format must be 3, 4 or 5, got {self.patch_format!r}")
        if self.patch_format != 5 and not self.export_tflite:
            raise ConfigError("--patch_format sets the format of the exported patches; add "
                              "--export_tflite")
        if self.bn_momentum is not None and not 0.0 <= self.bn_momentum < 1.0:
            raise ConfigError(f"--bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if self.bn_epsilon is not None and not 0.0 < self.bn_epsilon <= 1.0:
            raise ConfigError(f"--bn_epsilon must be in (0, 1], got {self.bn_epsilon!r}")
        if self.export_tflite and not self.out_dir:
            raise ConfigError("--export_tflite needs --out_dir")
        if not 1.0 <= self.int8_headroom <= 16.0:
            raise ConfigError(f"--int8_headroom must be in [1, 16], got {self.int8_headroom!r}")
        if not self.checkpoint_seconds >= 0:
            raise ConfigError(f"--checkpoint_seconds must be >= 0, got "
                              f"{self.checkpoint_seconds!r}")
        if self.resume and not self.out_dir:
            raise ConfigError("--resume continues the run in --out_dir; give --out_dir")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out_dir, --overwrite replaces "
                              "it: give one of them")
        if self.num_classes is not None and (not isinstance(self.num_classes, int)
                                             or self.num_classes < 2):
            raise ConfigError(f"--num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.qat and not self.export_tflite:
            raise ConfigError("--qat trains against the deployed int8 model; add --export_tflite")
        if self.budget_bytes is not None:
            if not self.export_tflite:
                raise ConfigError("--budget_bytes counts the bytes of the int8 patch; "
                                  "add --export_tflite")
            if self.method not in ("dpu", "gcpu", "lcpu", "rpu"):
                raise ConfigError(f"--budget_bytes applies to dpu, gcpu, lcpu and rpu, not "
                                  f"{self.method} (it sends whole models)")
            if self.iterative:
                raise ConfigError("--budget_bytes and --iterative cannot be combined")
            if not isinstance(self.budget_bytes, int) or self.budget_bytes < 200:
                raise ConfigError(f"--budget_bytes must be an integer >= 200, got "
                                  f"{self.budget_bytes!r}")
        if self.target_gap is not None:
            if not 0.0 <= self.target_gap <= 100.0:
                raise ConfigError(f"--target_gap is in accuracy points, [0, 100]; got "
                                  f"{self.target_gap!r}")
            if self.method not in ("dpu", "gcpu", "lcpu"):
                raise ConfigError(f"--target_gap needs step 1's full model: dpu, gcpu or lcpu, "
                                  f"not {self.method}")
            if self.iterative:
                raise ConfigError("--target_gap and --iterative cannot be combined")
            if self.reinit not in ("auto", "off"):
                raise ConfigError("--target_gap measures against the deployed model; it "
                                  "cannot be combined with --reinit")
        if not 0.0 <= self.target_confidence <= 5.0:
            raise ConfigError(f"--target_confidence (standard errors) must be in [0, 5], got "
                              f"{self.target_confidence!r}")
        if not 0.0 < self.max_update_ratio <= 1.0:
            raise ConfigError(f"--max_update_ratio must be in (0, 1], got "
                              f"{self.max_update_ratio!r}")
        _positive("target_search_steps", self.target_search_steps)
        if not 0.0 <= self.target_judge_share < 1.0:
            raise ConfigError(f"--target_judge_share must be in [0, 1), got "
                              f"{self.target_judge_share!r}")
        if self.target_judge_share and self.target_gap is None:
            raise ConfigError("--target_judge_share holds validation samples out to judge "
                              "--target_gap; add --target_gap")
        if self.sign_key and not self.export_tflite:
            raise ConfigError("--sign_key signs exported patches; add --export_tflite")
        _one_of("strategy", self.strategy, STRATEGIES)
        if not isinstance(self.logical_cpus, int) or not 0 <= self.logical_cpus <= 64:
            raise ConfigError(f"--logical_cpus must be in [0, 64], got {self.logical_cpus!r}")
        if self.logical_cpus and self.strategy != "mirrored":
            raise ConfigError("--logical_cpus splits the CPU for --strategy=mirrored only")
        if self.method == "fu" and self.reinit not in ("auto", "off"):
            raise ConfigError("--method=fu chooses its start with --fu_init, not --reinit")

    @property
    def model_file(self) -> bool:
        """Whether `model` names a Keras model file of the user's."""
        return self.model.endswith(MODEL_FILES)

    def budget(self, total_elements: int) -> int:
        """The most kernel elements a partial round may change: ceil(k * I)."""
        return max(1, math.ceil(self.update_ratio * total_elements - 1e-9))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def same_run(self, other: dict) -> Optional[str]:
        """The first setting that differs from a saved config (ignoring resume), or None."""
        mine = self.to_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in sorted(set(mine) | set(other)):
            # How a run is spread over devices, and where its folder sits (it
            # may have been moved or copied), may change between resumes.
            if key in ("resume", "overwrite", "checkpoint_seconds", "strategy", "logical_cpus",
                       "out_dir"):
                continue
            # A setting added after the run was saved ran as its default.
            if key not in other and key in defaults and mine[key] == defaults[key]:
                continue
            if mine.get(key) != other.get(key):
                return key
        return None
