"""Quiets what TensorFlow Lite's native code prints on the process's stderr.

The converter's quantizer and the LiteRT interpreter write lines such as
"fully_quantize: 0, inference_type: 6, ..." and "INFO: Created TensorFlow
Lite XNNPACK delegate for CPU." straight to file descriptor 2, below any
Python or absl log level. Around those calls the descriptor points at
/dev/null unless `set_verbose(True)` (the command lines' `--verbose`).
Errors still arrive as Python exceptions with their messages.
"""

import contextlib
import ctypes
import os
import sys
import tempfile

_VERBOSE = [False]


def set_verbose(verbose: bool) -> None:
    """Whether native TensorFlow Lite output reaches stderr (default: no)."""
    _VERBOSE[0] = bool(verbose)


@contextlib.contextmanager
def muted():
    """Points file descriptor 2 at /dev/null for the block (unless verbose)."""
    if _VERBOSE[0]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def captured(call, descriptor: int = 2) -> str:
    """Runs `call()` and returns what native code wrote to a file descriptor
    (TFLite Micro's logging goes to stderr, 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(descriptor)
    with tempfile.TemporaryFile(mode="w+") as sink:
        try:
            os.dup2(sink.fileno(), descriptor)
            call()
        finally:
            # C's stdio may buffer a redirected stream: flush it into the sink.
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, descriptor)
            os.close(saved)
        sink.seek(0)
        return sink.read()
