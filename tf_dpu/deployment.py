"""The server's int8 deployment: one `.tflite` per round and the patch between rounds.

Round 0 is converted once (full-integer int8, calibrated on round 0's
training samples). Every later round's file is the previous file with the
changed weights re-quantized under its frozen scales, and the patch between
the two is what crosses the link. A round that sends nothing keeps the file.
"""

import os
from typing import Dict, List, Optional

import numpy as np

from tf_dpu.data import Preprocessing
from tflite_edge.files import write_atomic
from tflite_edge.convert import (PatchCost, build_map, convert_int8, int8_accuracy,
                                 kernel_bounds, requantize, with_headroom)
from tflite_edge.create import create_patch
from tflite_edge.model_file import ModelFile

_CALIBRATION_SAMPLES = 100


class TfliteExport:
    """Writes `round_NNN/model.tflite` and `round_NNN/update.patch` as rounds finish.

    The files are device-ready: one sample at a time (static batch 1), the
    data set's raw samples as input (its preprocessing runs in the graph),
    int8 or uint8 input and output.

    Args:
      model: the Keras model (its weights are set to each round's deployment).
      x_test, y_test: where the deployed int8 accuracy is measured (model
        inputs; the device is fed their raw samples).
      signer: optional callable(bytes) -> Ed25519 signature for the patches.
      headroom: factor by which round 0's weight scales are widened.
      preprocessing: the data set's `tf_dpu.data.Preprocessing`.
      io_type: `int8` or `uint8`.
      patch_format: the format of the round patches (5, or 4 or 3).
    """

    def __init__(self, model, x_test: np.ndarray, y_test: np.ndarray, signer=None,
                 headroom: float = 1.0, preprocessing: Preprocessing = Preprocessing(),
                 io_type: str = "int8", patch_format: int = 5):
        self.model = model
        self.patch_format = patch_format
        self.headroom = headroom
        self.preprocessing = preprocessing
        self.input_affine = None if preprocessing.identity else preprocessing.affine()
        self.io_type = io_type
        self.x_test, self.y_test = preprocessing.to_raw(x_test), y_test
        self.signer = signer
        self.mapping = None
        self.file: Optional[bytes] = None
        self.weights: Optional[List[np.ndarray]] = None
        self.accuracy = 0.0

    def patch_cost(self, bias_policy: str) -> PatchCost:
        """The exact patch size of a selection, for byte budgets."""
        changes = {"full": "all", "masked": "selected", "frozen": "none"}[bias_policy]
        return PatchCost(self.mapping, changes, self.signer is not None)

    def qat_model(self):
        """The model computing what the deployed file computes (see tf_dpu.qat)."""
        from tf_dpu.qat import frozen_qat_model  # pylint: disable=import-outside-toplevel
        return frozen_qat_model(self.model, self.mapping, ModelFile(self.file))

    def bounds(self) -> List[Optional[np.ndarray]]:
        """Per-weight magnitude limits of the deployed int8 model (after round 0)."""
        return kernel_bounds(self.mapping, len(self.model.weights))

    def _at_bound(self, weights: List[np.ndarray]) -> float:
        """The share of changed kernel elements that end at the int8 range's edge.

        Training inside the bounds never clips, but an element held at its
        bound wanted to go further: a large share means the bounds, not the
        data, shaped the round (widen --int8_headroom).
        """
        changed = at_bound = 0
        for new, old, limit in zip(weights, self.weights, self.bounds()):
            if limit is None:
                continue
            moved = new != old
            changed += int(moved.sum())
            at_bound += int(np.count_nonzero(moved & (np.abs(new) >= limit * (1 - 1e-6))))
        return at_bound / changed if changed else 0.0

    def export(self, folder: str, index: int, weights: List[np.ndarray], sent: bool,
               calibration: np.ndarray) -> Dict:
        """Writes this round's files; returns the metrics to add to its record."""
        os.makedirs(folder, exist_ok=True)
        record = {"patch_bytes": 0, "int8_changed": 0, "clipped_fraction": 0.0,
                  "at_bound_fraction": 0.0}
        if self.file is None:
            self.model.set_weights(weights)
            raw = self.preprocessing.to_raw(calibration[:_CALIBRATION_SAMPLES])
            converted = convert_int8(self.model, raw, self.input_affine, self.io_type)
            mapping = build_map(self.model, ModelFile(converted), self.input_affine)
            converted = with_headroom(converted, mapping, weights, self.headroom)
            self.file = converted
            # verifies the widening
            self.mapping = build_map(self.model, ModelFile(self.file), self.input_affine)
            self.accuracy = int8_accuracy(self.file, self.x_test, self.y_test)
            sent_bytes = len(self.file)
        elif sent:
            new_file, stats = requantize(self.file, self.mapping, weights, self.weights)
            patch = create_patch(self.file, new_file, index, self.signer,
                                 version=self.patch_format)
            write_atomic(os.path.join(folder, "update.patch"), patch)
            if new_file != self.file:
                self.accuracy = int8_accuracy(new_file, self.x_test, self.y_test)
            self.file = new_file
            sent_bytes = len(patch)
            record.update(patch_bytes=len(patch), int8_changed=stats.changed_int8,
                          clipped_fraction=round(stats.clipped_fraction, 6),
                          at_bound_fraction=round(self._at_bound(weights), 6))
        else:
            sent_bytes = 0
        self.weights = [w.copy() for w in weights]
        write_atomic(os.path.join(folder, "model.tflite"), self.file)
        record.update(int8_headroom=self.headroom, tflite_test_accuracy=self.accuracy,
                      tflite_bytes=len(self.file), sent_bytes=sent_bytes)
        return record
