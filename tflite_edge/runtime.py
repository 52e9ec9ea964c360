"""Running an int8 `.tflite` the way a device does: the LiteRT interpreter."""

import numpy as np

from tflite_edge import native_output


def quantize_input(x: np.ndarray, scale: float, zero_point: int,
                   dtype=np.int8) -> np.ndarray:
    """Float samples in the integer type the model's input takes (int8, or Coral's uint8).

    Args:
      x: float samples.
      scale, zero_point: the input tensor's quantization.
      dtype: the input tensor's type, `np.int8` or `np.uint8`.
    """
    limits = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, limits.min, limits.max).astype(dtype)


def logits(model_bytes: bytes, x: np.ndarray, batch: int = 256,
           reference_kernels: bool = False) -> np.ndarray:
    """The model's raw int8 outputs for float inputs `x` (quantized as the model asks).

    Args:
      model_bytes: the `.tflite` file.
      x: samples, as the model's input takes them (raw for device-ready files).
      batch: samples per invocation.
      reference_kernels: LiteRT's reference kernels (the arithmetic TFLite
        Micro implements) instead of its optimized ones (what phones run).
    """
    from ai_edge_litert.interpreter import (  # pylint: disable=import-outside-toplevel
        Interpreter, OpResolverType)
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO

    def fresh():
        with native_output.muted():   # "Created TensorFlow Lite XNNPACK delegate" on stderr
            made = Interpreter(model_content=bytes(model_bytes),
                               experimental_op_resolver_type=resolver)
            made.allocate_tensors()
        return made

    interpreter = fresh()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    scale, zero_point = detail["quantization"]
    outputs = []
    resized = None
    start = 0
    while start < len(x):
        chunk = x[start:start + batch]
        if resized != len(chunk):
            try:
                interpreter.resize_tensor_input(detail["index"], [len(chunk), *x.shape[1:]])
                interpreter.allocate_tensors()
                resized = len(chunk)
            except RuntimeError:
                # A graph whose Reshape constants fix the batch at 1 (the 1-D
                # CNN's) cannot be resized: it runs a sample at a time, as on
                # the device.
                interpreter, batch, resized = fresh(), 1, 1
                continue
        interpreter.set_tensor(detail["index"],
                               quantize_input(chunk, scale, zero_point, detail["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output["index"]).copy())
        start += len(chunk)
    return np.concatenate(outputs)


def micro_logits(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The model's raw int8 outputs in the TFLite Micro interpreter (pip `tflite-micro`)."""
    from tflite_micro.python.tflite_micro import (  # pylint: disable=import-outside-toplevel
        runtime as micro)
    interpreter = micro.Interpreter.from_bytes(bytes(model_bytes))
    details = interpreter.get_input_details(0)
    detail, dtype = details["quantization_parameters"], details["dtype"]
    outputs = []
    for sample in x:   # TFLite Micro runs one sample at a time, as a microcontroller does
        interpreter.set_input(quantize_input(sample[None], detail["scales"][0],
                                             detail["zero_points"][0], dtype), 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0).copy())
    return np.concatenate(outputs)


def predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Predicted classes (argmax of the int8 logits, which dequantization preserves)."""
    return np.argmax(logits(model_bytes, x), axis=-1)
