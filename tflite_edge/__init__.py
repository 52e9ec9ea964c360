"""Device side of Deep Partial Updating: int8 TFLite files and per-round weight patches.

Applying a patch needs only numpy and the standard library (plus
`cryptography` to check signatures); reading model structure uses the
FlatBuffers schema that ships with `ai-edge-litert`. Only `tflite_edge.convert`
(the server's export) imports TensorFlow.
"""

__version__ = "0.1.0"
