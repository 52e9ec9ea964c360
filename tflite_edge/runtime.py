"""Running an int8 `.tflite` the way a device does: the LiteRT interpreter."""

import numpy as np

from tflite_edge import native_output


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def logits(model_bytes: bytes, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's raw int8 outputs for float inputs `x` (quantized as the model asks)."""
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    with native_output.muted():   # "Created TensorFlow Lite XNNPACK delegate" on stderr
        interpreter = Interpreter(model_content=bytes(model_bytes))
        interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    scale, zero_point = detail["quantization"]
    outputs = []
    resized = None
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if resized != len(chunk):
            interpreter.resize_tensor_input(detail["index"], [len(chunk), *x.shape[1:]])
            interpreter.allocate_tensors()
            resized = len(chunk)
        interpreter.set_tensor(detail["index"], quantize_input(chunk, scale, zero_point))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output["index"]).copy())
    return np.concatenate(outputs)


def predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Predicted classes (argmax of the int8 logits, which dequantization preserves)."""
    return np.argmax(logits(model_bytes, x), axis=-1)
