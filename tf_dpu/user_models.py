"""A user's own Keras model: loaded from a file or given to the Python API, checked up front.

    python -m tf_dpu.train --model=my_model.keras ...
    run(config, model=my_keras_model)            # or a builder: f(input_shape, classes, seed)

The model is a Keras 3 model (`keras.Model`, or a `.keras` file saved by
Keras 3), trained through a checked `tf_keras` twin (`tf_dpu.keras3`) and
given back as Keras 3 each round, or a `tf_keras` (Keras 2) model. Either is
a functional or Sequential model with one input and one output of logits,
built only from `SUPPORTED_LAYERS` (and, in Keras 3, the layers
`tf_dpu.keras3` builds from them), with at least one kernel (a trainable weight of rank 2 or more) to update. Every
violation is one line naming the layer or the shape, before anything is
trained or written. The run trains a copy; the given model is not modified.
"""

from typing import Callable, Union

from tf_dpu.errors import ConfigError

# Layers the training loop, the contribution metric and the int8 export all
# handle (Dense, Conv and DepthwiseConv kernels are what DPU selects from).
SUPPORTED_LAYERS = (
    "InputLayer", "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "BatchNormalization",
    "ReLU", "Activation", "Flatten", "Reshape", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "AveragePooling1D", "AveragePooling2D", "MaxPooling1D",
    "MaxPooling2D", "Add", "Concatenate", "Dropout", "ZeroPadding2D", "Rescaling",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Multiply")
# Activations inside the model (a final softmax would turn logits into probabilities).
SUPPORTED_ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "tanh", "softmax")

Builder = Callable[..., object]


def load(path: str):
    """Loads a `.keras` or `.h5` model file (compile state ignored).

    Raises:
      ConfigError: a missing or unreadable file, or one this Keras cannot load.
    """
    import os  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
        raise ConfigError(f"--model={path}: no such file")
    from tf_dpu import keras3  # pylint: disable=import-outside-toplevel
    if keras3.saved_by_keras3(path):
        return keras3.load(path)
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises anything on a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--model={path}: not a Keras model file ({first[:200]})") from None


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def validate(model, input_shape, num_classes: int, name: str = "the model") -> None:
    """Refuses, in one line, a model the run cannot train, select from or export.

    Args:
      model: a Keras model.
      input_shape: the data set's sample shape.
      num_classes: the data set's number of classes.
      name: how the error names the model (its file, or "the model").
    """
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{name} is a {type(model).__name__}, not a Keras model (Keras 3 "
                          "or tf_keras) nor a builder f(input_shape, num_classes, seed)")
    if not getattr(model, "_is_graph_network", False):
        raise ConfigError(f"{name} is a subclassed Keras model; build it with the functional or "
                          "Sequential API (its layers and their connections must be known)")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"{name} has {len(model.inputs)} inputs and {len(model.outputs)} "
                          "outputs; one of each is supported")
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ConfigError(f"{name}: layer {layer.name} ({kind}) is not supported (supported: "
                              f"{', '.join(SUPPORTED_LAYERS)})")
        if _activation_name(layer) not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(f"{name}: layer {layer.name} uses activation "
                              f"{_activation_name(layer)!r} (supported: "
                              f"{', '.join(SUPPORTED_ACTIVATIONS)})")
    last = model.layers[-1]
    if _activation_name(last) == "softmax" or (type(last).__name__ == "Activation"
                                                and _activation_name(last) in ("softmax",
                                                                               "sigmoid")):
        raise ConfigError(f"{name}: its last layer {last.name} outputs probabilities; the "
                          "training loop expects logits (remove the final softmax)")
    expected = (None, *tuple(input_shape))
    if tuple(model.input_shape) != expected:
        raise ConfigError(f"{name} takes inputs of shape {tuple(model.input_shape)[1:]}, but "
                          f"the data set's samples are {tuple(input_shape)}")
    if tuple(model.output_shape) != (None, num_classes):
        raise ConfigError(f"{name} outputs shape {tuple(model.output_shape)[1:]}, but the data "
                          f"set has {num_classes} classes (an output of ({num_classes},) logits)")
    if not any(len(w.shape) >= 2 for w in model.trainable_weights):
        raise ConfigError(f"{name} has no trainable kernel (a weight of rank 2 or more) for a "
                          "partial update to select from")


class ModelSource:
    """Builds the run's model: a built-in architecture, a model file, or the API's model.

    Args:
      config: the resolved run settings.
      input_shape, num_classes: the data set's.
      model: from the Python API: a Keras model (copied) or a builder
        `f(input_shape, num_classes, seed) -> keras.Model`.

    Raises:
      ConfigError: a model that fails `validate`, or a setting it cannot honour
        (a new random initialization per round of a model given as weights).
    """

    def __init__(self, config, input_shape, num_classes: int,
                 model: Union[None, object, Builder] = None):
        self.config = config
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.given = model
        if model is not None and config.model_file:
            raise ConfigError("give the model either as --model=PATH or to run(), not both")
        fixed = model is not None and not callable(model) or config.model_file
        if model is not None and callable(model) and hasattr(model, "layers"):
            fixed = True   # a Keras model is callable too: it is weights, not a builder
        if fixed and config.method == "fu" and config.fu_init == "diff_init":
            raise ConfigError("--fu_init=diff_init draws a new initialization each round, which "
                              "needs a builder function; a model given as weights has one")
        self.fixed = fixed
        self.name = config.model if config.model_file else "the model"
        if model is not None and not fixed:
            _check_builder(model)
        self.twin = None   # a Keras 3 model's tf_keras twin (see `tf_dpu.keras3`)
        self.model = self.build(config.seed)
        self.has_batch_norm = any(type(l).__name__ == "BatchNormalization"
                                  for l in self.model.layers)

    def build(self, seed: int):
        """A checked model with the initialization of `seed` (a given model: its weights).

        `self.model` is the one of the run's seed. Layers get process-independent
        names after the check, so that errors name the user's layers.
        """
        from tf_dpu import models  # pylint: disable=import-outside-toplevel
        config = self.config
        if self.given is None and not config.model_file:
            model = models.build_model(config.model, self.input_shape, self.num_classes, seed,
                                       config.initializer, config.width_multiplier,
                                       config.bn_momentum, config.bn_epsilon)
        elif config.model_file:
            model = load(config.model)
        elif not self.fixed:
            model = self.given(self.input_shape, self.num_classes, seed)
        else:
            model = self.given
        from tf_dpu import keras3  # pylint: disable=import-outside-toplevel
        if keras3.is_keras3(model):
            twin = keras3.Twin(model, self.name)
            if seed == config.seed:
                self.twin = twin
            model = twin.model
        validate(model, self.input_shape, self.num_classes, self.name)
        if self.given is None and not config.model_file:
            return model
        model = _renamed(copy_model(model) if self.fixed and not config.model_file else model)
        if config.bn_momentum is not None:
            for layer in model.layers:
                if type(layer).__name__ == "BatchNormalization":
                    layer.momentum = config.bn_momentum
        return model

    @property
    def display_name(self) -> str:
        """What metrics, the plot and TensorBoard call the model."""
        if self.given is None:
            return self.config.model
        if self.fixed:
            given = getattr(self.given, "name", "") or "model"
            # Keras makes names unique per process (model_1, ...): drop that suffix.
            return given.rstrip("0123456789").rstrip("_") or given
        return getattr(self.given, "__name__", "builder")


def _check_builder(builder) -> None:
    """Refuses, in one line, a builder not callable as f(input_shape, num_classes, seed)."""
    import inspect  # pylint: disable=import-outside-toplevel
    try:
        inspect.signature(builder).bind((1,), 2, 0)
    except TypeError as e:
        raise ConfigError(f"the model builder {getattr(builder, '__name__', builder)!r} must "
                          f"take (input_shape, num_classes, seed): {e}") from None
    except ValueError:
        pass   # no signature to read (a builtin): the call itself will tell


def copy_model(model):
    """A tf_keras model's copy: same architecture and weights."""
    import tf_keras as keras  # pylint: disable=import-outside-toplevel
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _renamed(model):
    """The model with process-independent names (the converter writes them into files)."""
    from tf_dpu.models import fixed_names  # pylint: disable=import-outside-toplevel
    return fixed_names(model)
