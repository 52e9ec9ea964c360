"""Keras 3 models in and out: a faithful `tf_keras` twin to train, and `.keras` files back.

Training stays on `tf_keras` (Keras 2): the TFLite converter path and
tensorflow-model-optimization's quantization-aware training, which `--qat`
uses, have no Keras 3 support. A Keras 3 model (any backend: only its
configuration and weights are read) is rebuilt layer by layer as a
`tf_keras` functional model with the same layer names, connections and
weights, and the twin is checked to compute what the original computes on
random inputs before anything is trained. Each round's weights go back
into a copy of the user's Keras 3 model, saved as `model.keras`.

    twin = Twin(keras3_model, "the model")     # twin.model: the tf_keras model
    twin.save(twin.model, "runs/x/round_003")  # runs/x/round_003/model.keras

What has no `tf_keras` equivalent is refused in one line naming the layer.
"""

import inspect
import os
import sys
import zipfile
from typing import Dict, List, Tuple

import numpy as np

from tf_dpu.errors import ConfigError

# Keras 3 functional graphs record scalar arithmetic on tensors (MobileNetV3's
# `x + 3.0`, `x * (1 / 6)`) as operations, not layers: as Rescaling layers
# (x * scale + offset) they stay within what the exporter maps.
_SCALAR_OPS = {"Add": lambda c: (1.0, c), "Subtract": lambda c: (1.0, -c),
               "Multiply": lambda c: (c, 0.0), "Divide": lambda c: (1.0 / c, 0.0),
               "TrueDivide": lambda c: (1.0 / c, 0.0)}
# The same operations between two tensors are Keras' merge layers.
_TENSOR_OPS = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}
# Arguments every tf_keras layer takes through **kwargs.
_BASE_KEYS = ("name", "trainable", "dtype", "batch_input_shape", "input_shape")
# How far a twin's outputs may differ from the original's (float32 round-off
# through a deep network; a wrong conversion differs at order one).
_TOLERANCE = 1e-4
_METADATA_LIMIT = 1 << 16


def saved_by_keras3(path: str) -> bool:
    """Whether `path` is a `.keras` archive written by Keras 3 (its metadata says so)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("metadata.json")
            if info.file_size > _METADATA_LIMIT:
                return False
            import json  # pylint: disable=import-outside-toplevel
            version = str(json.loads(archive.read(info)).get("keras_version", ""))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, AttributeError):
        return False
    return version.startswith("3.")


def load(path: str):
    """Loads a Keras 3 model file (safe mode: no deserialized Python code).

    Raises:
      ConfigError: one this Keras cannot load.
    """
    import keras  # pylint: disable=import-outside-toplevel
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises anything on a bad file
        raise ConfigError(f"--model={path}: a Keras 3 file that Keras "
                          f"{keras.__version__} cannot load ({_first_line(e)})") from None


def is_keras3(model) -> bool:
    """Whether `model` is a Keras 3 model (not a `tf_keras` one)."""
    keras = sys.modules.get("keras")
    return keras is not None and hasattr(keras, "Model") and isinstance(model, keras.Model) \
        and type(model).__module__.split(".")[0] == "keras"


class Twin:
    """A Keras 3 model's `tf_keras` twin, and the way back.

    Args:
      original: the user's Keras 3 model (not modified).
      name: how errors name the model.

    Raises:
      ConfigError: a layer, option or connection without a tf_keras
        equivalent, or a twin that does not compute what the original does.
    """

    def __init__(self, original, name: str = "the model"):
        import keras  # pylint: disable=import-outside-toplevel
        self.name = name
        self.original = original
        config = original.get_config()
        kind = type(original).__name__
        if kind == "Sequential":
            self.model, self.pairs = self._sequential(config)
        elif "layers" in config and "input_layers" in config:
            self.model, self.pairs = self._functional(config)
        else:
            raise ConfigError(f"{name} is a subclassed Keras 3 model ({kind}); build it with "
                              "the functional or Sequential API")
        for layer_name, twins in self.pairs.items():
            weights = original.get_layer(layer_name).get_weights()
            mine = [w for twin in twins for w in twin.get_weights()]
            if [w.shape for w in weights] != [w.shape for w in mine]:
                raise ConfigError(f"{name}: layer {layer_name} holds weights of shapes "
                                  f"{[w.shape for w in weights]}, its Keras 2 twin "
                                  f"{[w.shape for w in mine]}")
            for twin in twins:   # a split layer's weights, in order, to its parts
                count = len(twin.get_weights())
                twin.set_weights(weights[:count])
                weights = weights[count:]
        # Copies of the twin (the run trains one, renamed) keep its layer
        # order: position i of any copy is part of the Keras 3 layer order[i].
        names = {id(twin): layer_name for layer_name, twins in self.pairs.items()
                 for twin in twins}
        self.order = [names.get(id(layer)) for layer in self.model.layers]
        self._check(keras)

    def _check(self, keras) -> None:
        shape = tuple(self.original.input_shape[1:])
        if any(d is None for d in shape):
            raise ConfigError(f"{self.name} takes inputs of shape {shape}; give every "
                              "dimension but the batch")
        x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
        expected = keras.ops.convert_to_numpy(self.original(x, training=False))
        got = self.model(x, training=False).numpy()
        scale = max(1.0, float(np.abs(expected).max()))
        if got.shape != expected.shape or not np.all(np.abs(got - expected) <= _TOLERANCE
                                                      * scale):
            raise ConfigError(f"{self.name}: its Keras 2 twin computes other outputs than the "
                              "Keras 3 model; it cannot be trained here")

    def _layers(self, entry: Dict) -> List:
        """The tf_keras layers, applied in sequence, of one Keras 3 layer entry.

        Most layers have one twin. Where the exporter knows only the parts,
        the layer becomes its parts, computing the same function:
        SeparableConv2D is a depthwise then a 1x1 convolution, hard sigmoid
        clip(x / 6 + 1/2, 0, 1) and hard swish x times that.
        """
        import tf_keras  # pylint: disable=import-outside-toplevel
        kind, config = entry["class_name"], entry["config"]
        name = config.get("name", entry.get("name"))
        if kind == "SeparableConv2D" and entry.get("module", "").startswith("keras.layers"):
            parts = dict(config, name=f"{name}_depthwise", use_bias=False, activation="linear")
            for key in ("filters", "pointwise_initializer", "pointwise_regularizer",
                        "pointwise_constraint", "bias_initializer", "bias_regularizer",
                        "bias_constraint"):
                parts.pop(key, None)
            pointwise = {k: v for k, v in config.items()
                         if k in ("filters", "use_bias", "activation", "dtype", "trainable",
                                  "data_format")}
            return [self._layer(dict(entry, class_name="DepthwiseConv2D", config=parts)),
                    self._layer(dict(entry, class_name="Conv2D", config=dict(
                        pointwise, name=name, kernel_size=(1, 1))))]
        hard = config.get("activation")
        if hard in _HARD:
            # As an Activation layer or a layer's own activation (Keras 3
            # writes hard swish as hard_silu).
            parts = [] if kind == "Activation" else [self._layer(dict(entry, config=dict(
                config, name=f"{name}_linear", activation="linear")))]
            return parts + [_HARD[hard](tf_keras, name)]
        return [self._layer(entry)]

    def _layer(self, entry: Dict):
        """A tf_keras layer from one Keras 3 layer entry of a model configuration."""
        import tf_keras  # pylint: disable=import-outside-toplevel
        from tf_dpu.user_models import SUPPORTED_LAYERS  # pylint: disable=import-outside-toplevel
        kind, config = entry["class_name"], dict(entry["config"])
        layer_name = config.get("name", entry.get("name"))
        if kind not in SUPPORTED_LAYERS or not entry.get("module", "").startswith("keras.layers"):
            raise ConfigError(f"{self.name}: layer {layer_name} ({kind}) is not supported "
                              f"(supported: {', '.join(SUPPORTED_LAYERS + _SPLIT)})")
        cls = getattr(tf_keras.layers, kind)
        # Options may be taken by a base class through **kwargs (BatchNorm's renorm).
        accepted = set(_BASE_KEYS).union(*(inspect.signature(c.__init__).parameters
                                          for c in cls.__mro__ if "__init__" in vars(c)))
        kwargs = {}
        for key, value in config.items():
            if key == "batch_shape":
                key = "batch_input_shape"
            if key.endswith(("_initializer", "_regularizer", "_constraint")):
                # The weights are copied; the training loop applies its own
                # weight decay and no constraint, as for a tf_keras model.
                continue
            if key == "dtype":
                value = value.get("config", {}).get("name") if isinstance(value, dict) else value
                if value not in (None, "float32"):
                    raise ConfigError(f"{self.name}: layer {layer_name} computes in {value}; "
                                      "training and the int8 export start from float32")
            if key not in accepted:
                if value in (None, False, 0, {}, []):
                    continue
                raise ConfigError(f"{self.name}: layer {layer_name} ({kind}) sets {key}="
                                  f"{value!r}, which Keras 2 has no equivalent of")
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.name}: layer {layer_name} ({kind}): "
                              f"{_first_line(e)}") from None

    def _sequential(self, config: Dict):
        import tf_keras  # pylint: disable=import-outside-toplevel
        entries = list(config["layers"])
        if entries and entries[0]["class_name"] == "InputLayer":
            shape = entries.pop(0)["config"]["batch_shape"]
        elif config.get("build_input_shape"):
            shape = config["build_input_shape"]
        else:
            raise ConfigError(f"{self.name} is a Sequential model that was never built; give "
                              "it a keras.Input")
        tensor = inputs = tf_keras.Input(batch_shape=tuple(shape))
        pairs = {}
        for entry in entries:
            tensor, pairs[entry["config"]["name"]] = _apply(self._layers(entry), [tensor])
        return tf_keras.Model(inputs, tensor, name=config.get("name")), pairs

    def _functional(self, config: Dict):
        import tf_keras  # pylint: disable=import-outside-toplevel
        tensors: Dict[Tuple[str, int, int], object] = {}
        pairs = {}
        inputs = []
        for entry in config["layers"]:
            name = entry["name"]
            nodes = entry.get("inbound_nodes", [])
            if entry["class_name"] == "InputLayer":
                tensor = tf_keras.Input(batch_shape=tuple(entry["config"]["batch_shape"]),
                                        name=name)
                tensors[(name, 0, 0)] = tensor
                inputs.append(tensor)
                continue
            if len(nodes) != 1:
                raise ConfigError(f"{self.name}: layer {name} is called {len(nodes)} times; "
                                  "each layer must be used once (no shared layers)")
            args, kwargs = nodes[0]["args"], nodes[0].get("kwargs", {})
            # Keras records the training flag a layer was called with; the
            # training loop sets it, as it does for a tf_keras model.
            kwargs = {k: v for k, v in kwargs.items() if k != "training"}
            if any(v is not None for v in kwargs.values()):
                raise ConfigError(f"{self.name}: layer {name} is called with "
                                  f"{sorted(kwargs)}, which is not supported")
            if entry.get("module", "").startswith("keras.src.ops"):
                output = self._operation(entry, args, tensors)
            else:
                arguments = [self._resolve(a, tensors, name) for a in args]
                output, pairs[name] = _apply(self._layers(entry), arguments)
            tensors[(name, 0, 0)] = output
        outputs = [tensors[tuple(o)] for o in _references(config["output_layers"])]
        return tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                              outputs[0] if len(outputs) == 1 else outputs,
                              name=config.get("name")), pairs

    def _resolve(self, arg, tensors, name):
        if isinstance(arg, list):
            return [self._resolve(a, tensors, name) for a in arg]
        if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
            return tensors[tuple(arg["config"]["keras_history"])]
        raise ConfigError(f"{self.name}: layer {name} takes a constant argument {arg!r}, "
                          "which is not supported")

    def _operation(self, entry, args, tensors):
        """A scalar or elementwise Keras 3 operation as a tf_keras layer."""
        import tf_keras  # pylint: disable=import-outside-toplevel
        kind, name = entry["class_name"], entry["name"]
        flat = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        constants = [a for a in flat if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if len(flat) == 2 and len(constants) == 1 and kind in _SCALAR_OPS:
            tensor = self._resolve([a for a in flat if a is not constants[0]][0], tensors, name)
            if kind in ("Subtract", "Divide", "TrueDivide") and flat[0] is constants[0]:
                raise ConfigError(f"{self.name}: operation {name} ({kind}) of a constant by a "
                                  "tensor is not supported")
            if kind in ("Divide", "TrueDivide") and constants[0] == 0:
                raise ConfigError(f"{self.name}: operation {name} divides by zero")
            scale, offset = _SCALAR_OPS[kind](float(constants[0]))
            return tf_keras.layers.Rescaling(scale, offset, name=name)(tensor)
        if len(flat) == 2 and not constants and kind in _TENSOR_OPS:
            layer = getattr(tf_keras.layers, _TENSOR_OPS[kind])(name=name)
            return layer([self._resolve(a, tensors, name) for a in flat])
        raise ConfigError(f"{self.name}: operation {name} ({kind}) in the model's graph is not "
                          "supported (scalar +, -, *, / and elementwise +, -, * are)")

    def keras3_model(self, weights_model):
        """A copy of the user's Keras 3 model holding `weights_model`'s weights.

        Args:
          weights_model: the twin (or a model of its layers) with the weights to carry.
        """
        import keras  # pylint: disable=import-outside-toplevel
        copy = keras.models.clone_model(self.original)
        if len(weights_model.layers) != len(self.order):
            raise ValueError("not a copy of this model's twin")
        gathered: Dict[str, list] = {}
        for layer_name, layer in zip(self.order, weights_model.layers):
            if layer_name is not None:
                gathered.setdefault(layer_name, []).extend(layer.get_weights())
        for layer_name, weights in gathered.items():
            copy.get_layer(layer_name).set_weights(weights)
        return copy

    def save(self, weights_model, folder: str) -> str:
        """Writes `folder/model.keras` (Keras 3) with `weights_model`'s weights, atomically."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "model.keras")
        tmp = os.path.join(folder, "model.partial.keras")   # Keras wants the suffix
        self.keras3_model(weights_model).save(tmp)
        os.replace(tmp, path)
        return path


# Keras 3 layers the twin builds from parts (see `Twin._layers`).
_SPLIT = ("SeparableConv2D", "Activation(hard_sigmoid)", "Activation(hard_swish)")


def _hard_sigmoid(tf_keras, name, gate_name=None):
    """Keras 3's hard sigmoid, clip(x / 6 + 1/2, 0, 1), from layers the exporter maps."""
    layers = tf_keras.layers
    return lambda x: layers.ReLU(max_value=1.0, name=gate_name or name)(
        layers.Rescaling(1.0 / 6.0, 0.5, name=f"{name}_affine")(x))


def _hard_swish(tf_keras, name):
    """Keras 3's hard swish: x times its hard sigmoid."""
    gate = _hard_sigmoid(tf_keras, name, gate_name=f"{name}_gate")
    return lambda x: tf_keras.layers.Multiply(name=name)([x, gate(x)])


_HARD = {"hard_sigmoid": _hard_sigmoid, "hard_swish": _hard_swish, "hard_silu": _hard_swish}


def _apply(parts, arguments):
    """Calls `parts` in sequence on `arguments`; returns the output and the parts with weights."""
    output = parts[0](*arguments)
    for part in parts[1:]:
        output = part(output)
    return output, [p for p in parts if isinstance(getattr(p, "weights", None), list)]


def _references(value) -> List[Tuple[str, int, int]]:
    """A model's input or output references: one `[name, node, index]` or a list of them."""
    if value and isinstance(value[0], str):
        return [tuple(value)]
    return [tuple(v) for v in value]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
