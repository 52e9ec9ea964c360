"""Deep Partial Updating for TensorFlow/Keras: the server side.

Keras here is `tf_keras` (Keras 2): tensorflow-model-optimization and the TFLite
converter need it, and `TF_USE_LEGACY_KERAS` only takes effect when it is set
before TensorFlow is first imported, hence here, at the top of the package.

Usage:

    from tf_dpu import RunConfig, run
    result = run(RunConfig(method="dpu", update_ratio=0.01, rounds=3,
                           out_dir="runs/demo"))
    print(result.rounds[-1]["test_accuracy"])
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_dpu.config import RunConfig  # noqa: E402
from tf_dpu.errors import ConfigError, DataError, DpuError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["RunConfig", "run", "DpuError", "ConfigError", "DataError"]


def __getattr__(name):
    # `run` pulls in TensorFlow; import it only when asked for, so that
    # `import tf_dpu` (flag parsing, config checks) stays fast. TensorFlow's
    # native start-up lines (oneDNN, CUDA probes) are kept off stderr.
    if name == "run":
        from tflite_edge import native_output  # pylint: disable=import-outside-toplevel
        with native_output.muted():
            from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
        return run
    raise AttributeError(name)
