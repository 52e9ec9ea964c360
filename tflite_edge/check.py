"""Does a `.tflite` file meet a target's documented constraints? One line per operator.

    python -m tflite_edge.check --target=edgetpu MODEL.tflite
    python -m tflite_edge.check --target=tflm MODEL.tflite
    python -m tflite_edge.check --target=litert MODEL.tflite

* `edgetpu`: Coral's Edge TPU, from its documentation ("TensorFlow models on
  the Edge TPU"): every operator in its supported set (pooling without a
  fused activation), every activation tensor int8 or uint8, constant
  (static) shapes, at most 4-D tensors of which only the 3 innermost
  dimensions are above 1. The Edge TPU compiler itself cannot be installed
  here; see the README for what a compiled model means for patches.
* `tflm`: TensorFlow Lite for Microcontrollers: every operator in its op
  resolver (`micro_mutable_op_resolver.h`), no custom operators, static
  shapes; with the `tflite-micro` package installed, the file is also
  loaded and run in its interpreter, and the report gives what a firmware
  must reserve: the tensor arena (RAM), the smallest in which TFLite Micro
  runs the model, and the model's flash (the file, read in place). The arena
  is measured on the host build (64-bit pointers); on a 32-bit
  microcontroller its bookkeeping part is smaller, so the figure is an upper
  bound there. The interpreter's and the kernels' own code add to the flash.
* `litert`: every operator a builtin (no custom or TensorFlow "flex"
  operators), and the file loads and allocates in the LiteRT interpreter.

Exit status 0 when every check passes, 1 when one does not, 2 on a bad
command line or an unreadable file.
"""

import re
import sys
from typing import List, Tuple

import numpy as np
from absl import flags

from tflite_edge import cli, native_output
from tflite_edge.errors import PatchError
from tflite_edge.model_file import INT8, INT32, UINT8, ModelFile

TARGETS = ("edgetpu", "tflm", "litert")

EDGETPU_OPERATORS = frozenset((
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE",
    "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV"))
_POOLING = ("AVERAGE_POOL_2D", "MAX_POOL_2D")

TFLM_OPERATORS = frozenset((
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D",
    "BATCH_MATMUL", "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE", "CAST",
    "CEIL", "CONCATENATION", "CONV_2D", "COS", "CUMSUM", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D",
    "DEQUANTIZE", "DIV", "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP", "EXPAND_DIMS", "FILL",
    "FLOOR", "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER",
    "GREATER_EQUAL", "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU",
    "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC",
    "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "NEG",
    "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE", "REDUCE_MAX",
    "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "ROUND", "RSQRT",
    "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH",
    "SPLIT", "SPLIT_V", "SQUARE", "SQUARED_DIFFERENCE", "SQUEEZE", "SQRT", "STRIDED_SLICE",
    "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "UNPACK", "VAR_HANDLE", "WHILE", "ZEROS_LIKE"))


def _tensor_problems(model: ModelFile, target: str) -> List[str]:
    """Problems of the file's tensors (types, shapes) for a target."""
    problems = []
    for tensor in model.tensors:
        signature = tensor.shape_signature
        if signature is not None and -1 in signature:
            problems.append(f"tensor {tensor.name!r} has a dynamic shape {list(signature)}")
        if target != "edgetpu":
            continue
        # Parameters (weights, int32 biases, shape constants) are compiled in;
        # the limits on types and dimensions are about the activations.
        constant = model.buffers[tensor.buffer].length > 0 if tensor.buffer else False
        if tensor.type not in (INT8, UINT8) and not (constant and tensor.type == INT32):
            problems.append(f"tensor {tensor.name!r} is not int8 or uint8")
        if len(tensor.shape) > 4:
            problems.append(f"tensor {tensor.name!r} has {len(tensor.shape)} dimensions (at most 4)")
        elif len(tensor.shape) == 4 and tensor.shape[0] != 1 and not constant:
            problems.append(f"tensor {tensor.name!r} {list(tensor.shape)}: only the 3 innermost "
                            "dimensions may be above 1")
    return problems


def _operator_verdict(operator, target: str) -> str:
    """'' when the operator meets the target's documented constraints, else why not."""
    name = operator.name
    if target == "edgetpu":
        if name not in EDGETPU_OPERATORS:
            return "not in the Edge TPU's supported operations"
        if name in _POOLING and operator.fused_activation:
            return "pooling with a fused activation (the Edge TPU supports none)"
    elif target == "tflm":
        if name not in TFLM_OPERATORS:
            return "not in TFLite Micro's op resolver"
    elif name.startswith("CUSTOM") or name.startswith("BUILTIN_"):
        return "a custom or TensorFlow (flex) operator, not a LiteRT builtin"
    return ""


_ARENA = re.compile(r"Arena allocation total (\d+) bytes")


def _runs_in(runtime, data: bytes, arena: int = None):
    """The interpreter after one invocation on zeros, or None if it cannot allocate."""
    try:
        interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
        detail = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
        interpreter.invoke()
        return interpreter
    except RuntimeError:
        if arena is None:
            raise
        return None


def tflm_arena_bytes(runtime, data: bytes) -> Tuple[int, int]:
    """(the smallest tensor arena, to 16 bytes, in which TFLite Micro runs the model;
    what its recording allocator says the model's tensors used).

    The recorded use leaves out the allocator's own bookkeeping and alignment,
    so the arena a firmware must reserve is found by running the interpreter
    in arenas of decreasing size.
    """
    report = native_output.captured(_runs_in(runtime, data).print_allocations)
    found = _ARENA.search(report)
    if not found:
        raise RuntimeError("TFLite Micro reported no arena size")
    used = int(found.group(1))
    high = 2 * used + 4096
    while _runs_in(runtime, data, high) is None:
        high *= 2
        if high > 1 << 31:
            raise RuntimeError("TFLite Micro runs in no arena below 2 GiB")
    low = used - 16   # fails: at least the recorded use is needed
    while high - low > 16:
        middle = (low + high) // 32 * 16
        if _runs_in(runtime, data, middle) is None:
            low = middle
        else:
            high = middle
    return high, used


def _kib(count: int) -> str:
    return f"{count / 1024:.1f} KiB = {count} bytes"


def _runtime_problem(data: bytes, target: str) -> Tuple[str, str]:
    """(what ran, '' or why it failed) for the targets whose runtime is installed here."""
    if target == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
            with native_output.muted():
                Interpreter(model_content=data).allocate_tensors()
            return "loaded and allocated in LiteRT", ""
        except Exception as e:  # the interpreter raises RuntimeError or ValueError
            return "LiteRT", str(e).strip().splitlines()[0]
    if target == "tflm":
        try:
            from tflite_micro.python.tflite_micro import runtime  # pylint: disable=import-outside-toplevel
        except ImportError:
            return "", ""
        try:
            with native_output.muted():
                arena, used = tflm_arena_bytes(runtime, data)
            return ("loaded and run in TFLite Micro's interpreter; RAM: tensor arena "
                    f"{_kib(arena)}, of which the model's tensors use {used}; flash: model "
                    f"{_kib(len(data))}"), ""
        except Exception as e:  # the bindings raise RuntimeError with TFLM's message
            return "TFLite Micro", str(e).strip().splitlines()[0] if str(e).strip() else "failed"
    return "", ""


def check(data: bytes, target: str) -> Tuple[List[str], bool]:
    """The report's lines and whether every check passed.

    Raises:
      PatchError: not a TFLite file.
    """
    model = ModelFile(data)
    lines, ok = [], True
    for operator in model.operators:
        verdict = _operator_verdict(operator, target)
        ok = ok and not verdict
        lines.append(f"  op {operator.index:3d} {operator.name:<24} "
                     f"{'ok' if not verdict else 'NO: ' + verdict}")
    problems = _tensor_problems(model, target)
    for problem in problems:
        lines.append(f"  NO: {problem}")
    ok = ok and not problems
    ran, failure = _runtime_problem(data, target)
    if ran:
        lines.append(f"  {'NO: ' + ran + ': ' + failure if failure else ran}")
        ok = ok and not failure
    return lines, ok


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_enum("target", None, TARGETS, "the device runtime to check for",
                      flag_values=values)


def _check(values, model_path: str) -> int:
    from tflite_edge.files import read_file  # pylint: disable=import-outside-toplevel
    data = read_file(model_path, "model")
    target = values["target"].value
    lines, ok = check(data, target)
    print(f"{model_path} for {target}:")
    print("\n".join(lines))
    print(f"{'meets' if ok else 'does NOT meet'} the {target} constraints")
    return 0 if ok else 1


def main(argv=None) -> int:
    return cli.run_single("tflite_edge.check", _define, ("target",), _check, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["check", "TARGETS", "PatchError"]
