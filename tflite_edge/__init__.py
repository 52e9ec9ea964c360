"""int8 TFLite files and per-round weight patches: the device side and the server's export.

What runs on a device (`DEVICE`) needs only numpy and the standard library,
plus `cryptography` to check signatures in Python (the C and JVM appliers in
`c/` and `android/` need neither): verifying and applying a patch, the
device's state, the public-key check, atomic files, running a model in
LiteRT. What runs on the server (`SERVER`) builds what devices receive:
the int8 conversion and its weight map (`convert` and `folding`, the only
modules that import TensorFlow), patch creation, releases for a fleet, the
target checks. `tests/test_layout.py` holds the split: no device module
imports a server module, directly or through another.
"""

__version__ = "0.1.0"

DEVICE = ("adaptive", "apply", "device_state", "errors", "files", "keys", "model_file",
          "native_output", "patch_format", "positions", "regions", "runtime", "signing",
          "source")
SERVER = ("check", "convert", "create", "fleet", "folding")
# The command lines (`patch`, `cli`) serve both: `apply` on a device, the rest
# on the server.
