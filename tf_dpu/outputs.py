"""What a run writes: weights per round, metrics.json, CSV, TensorBoard, a plot.

TensorBoard gets the per-round figures under `tensorboard/` and, per round,
the per-epoch curves of each training step under `tensorboard/round_NNN/`.

Every file is written to a temporary name and renamed into place, so a file
in the run folder is always either the old one or the new one.
"""

import csv
import io
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

# One atomic writer for the whole project: temporary file, fsync, rename, fsync
# of the folder (re-exported here for the server's files).
from tflite_edge.files import write_atomic  # noqa: F401

def round_dir(out_dir: str, index: int) -> str:
    return os.path.join(out_dir, f"round_{index:03d}")


def weights_path(folder: str) -> str:
    return os.path.join(folder, "model.weights.h5")


def save_weights(model, weights: Sequence[np.ndarray], folder: str) -> str:
    """Saves `weights` as a Keras weights file `folder/model.weights.h5`."""
    os.makedirs(folder, exist_ok=True)
    path = weights_path(folder)
    model.set_weights(list(weights))
    # Keras picks the file format by the suffix, so the temporary name keeps it.
    tmp = os.path.join(folder, "model.partial.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)
    return path


def save_resume_state(folder: str, shuffle_state, values: Dict) -> None:
    """What a resumed run needs beyond the weights and metrics: RNG state, counters."""
    name, keys, position, has_gauss, cached = shuffle_state
    buffer = io.BytesIO()
    np.savez(buffer, rng_keys=keys, rng_meta=np.array([position, has_gauss], np.int64),
             rng_cached=np.array(cached), rng_name=np.array(name),
             values=np.array(json.dumps(values)))
    write_atomic(os.path.join(folder, "resume.npz"), buffer.getvalue())


def load_resume_state(folder: str):
    with np.load(os.path.join(folder, "resume.npz"), allow_pickle=False) as saved:
        state = (str(saved["rng_name"]), saved["rng_keys"], int(saved["rng_meta"][0]),
                 int(saved["rng_meta"][1]), float(saved["rng_cached"]))
        return state, json.loads(str(saved["values"]))


def read_weights_file(folder: str) -> Dict[str, np.ndarray]:
    """A saved round's arrays by their path in the weights file, without building a model.

    For comparing runs: the paths are the same for any two runs of one model.
    """
    import h5py  # pylint: disable=import-outside-toplevel
    arrays: Dict[str, np.ndarray] = {}
    with h5py.File(weights_path(folder), "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def load_weights(model, folder: str) -> List[np.ndarray]:
    model.load_weights(weights_path(folder))
    return model.get_weights()


def format_table(rounds: List[Dict]) -> str:
    """The per-round table printed at the end of a run.

    `full` is the test accuracy of the round's full update (DPU's step 1),
    `int8` the device's accuracy on the deployed file and `bytes` what was
    sent (both with the export); a column no round has is left out.
    """
    columns = [  # (title, width, the cell of a round)
        ("round", 5, lambda r: r["round"]), ("train", 6, lambda r: r["train_samples"]),
        ("val", 7, lambda r: f"{r['val_accuracy']:.4f}"),
        ("test", 7, lambda r: f"{r['test_accuracy']:.4f}"),
        ("full", 7, _optional("full_test_accuracy", ".4f")),
        ("int8", 7, _optional("tflite_test_accuracy", ".4f")),
        ("updated", 9, lambda r: r["updated_elements"]), ("of", 9, lambda r: r["total_elements"]),
        ("biases", 7, lambda r: r["changed_biases"]),
        ("sent", 5, lambda r: "yes" if r["sent"] else "no"),
        ("bytes", 9, _optional("sent_bytes", "d")),
        ("reinit", 6, lambda r: "yes" if r["reinitialized"] else "no"),
        ("s", 6, lambda r: f"{r['seconds']:.1f}")]
    cells = [[str(cell(r)) for _, _, cell in columns] for r in rounds]
    shown = [i for i, (title, _, _) in enumerate(columns)
             if title not in ("full", "int8", "bytes") or any(row[i] for row in cells)]
    header = " ".join(f"{columns[i][0]:>{columns[i][1]}}" for i in shown)
    lines = [header, "-" * len(header)]
    lines += [" ".join(f"{row[i]:>{columns[i][1]}}" for i in shown) for row in cells]
    return "\n".join(lines)


def _optional(key: str, form: str):
    return lambda r: format(r[key], form) if key in r else ""


def plot(rounds: List[Dict], config: Dict):
    """Test accuracy and what was sent, per round, as a matplotlib `Figure`.

    Left: the server's (float) test accuracy, the round's full update where
    the method trains one (DPU's step 1) and, with the int8 export, the
    device's (LiteRT on the deployed file). Right: cumulative kilobytes sent
    with the export, else cumulative kernel elements updated. Built without
    pyplot, so it never changes the process's (or a notebook's) backend; a
    notebook shows it by returning it from a cell.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
    fig = Figure(figsize=(10, 3.6))
    accuracy, sent = fig.subplots(1, 2)
    x = [r["round"] for r in rounds]
    accuracy.plot(x, [100 * r["test_accuracy"] for r in rounds], marker="o",
                  label=f"{config['method']}, server (float)")
    full = [r for r in rounds if "full_test_accuracy" in r]
    if full:
        # The full update step 1 reached: how far the device is from full retraining.
        accuracy.plot([r["round"] for r in full], [100 * r["full_test_accuracy"] for r in full],
                      marker="^", linestyle=":", label="full update (step 1), server")
    exported = all("tflite_test_accuracy" in r for r in rounds)
    if exported:
        accuracy.plot(x, [100 * r["tflite_test_accuracy"] for r in rounds], marker="s",
                      linestyle="--", label=f"{config['method']}, device (int8)")
        sent.plot(x, np.cumsum([r["sent_bytes"] for r in rounds]) / 1e3, marker="o")
        sent.set_ylabel("cumulative kB sent")
    else:
        sent.plot(x, np.cumsum([r["updated_elements"] for r in rounds]), marker="o")
        sent.set_ylabel("cumulative kernel elements updated")
    accuracy.set_ylabel("test accuracy (%)")
    accuracy.legend()
    budget = (f"k = {config['update_ratio']:g}" if not config.get("budget_bytes")
              else f"{config['budget_bytes']:,} bytes per round")
    fig.suptitle(f"{config['method']} on {config['dataset']}, {config['model']}, {budget}")
    sent.set_ylim(bottom=0)
    for ax in (accuracy, sent):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class RunWriter:
    """Writes the files of one run folder as rounds finish."""

    def __init__(self, out_dir: str, config: Dict):
        self.out_dir = out_dir
        self.config = config
        os.makedirs(out_dir, exist_ok=True)
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self._tf = tf
        self._summary = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))
        self._round_writer = None   # (round, writer) of the per-epoch curves

    def write_round(self, model, weights, rounds: List[Dict], shuffle_state=None,
                    resume_values: Optional[Dict] = None,
                    keras3_out: Optional[Callable[[str], object]] = None) -> None:
        """Saves a round's deployed weights and resume state, then the metrics files.

        `keras3_out(folder)`, for a Keras 3 model of the user's, writes the
        round's `model.keras` once `model` holds the round's weights.

        metrics.json is written last: a round counts as finished only once it
        lists the round, so a resumed run never starts from a half-saved one.
        """
        record = rounds[-1]
        folder = round_dir(self.out_dir, record["round"])
        save_weights(model, weights, folder)
        if keras3_out is not None:
            keras3_out(folder)
        if shuffle_state is not None:
            save_resume_state(folder, shuffle_state, resume_values or {})
        self.write_metrics(rounds)
        with self._summary.as_default(step=record["round"]):
            for key in ("val_accuracy", "test_accuracy", "updated_elements",
                        "changed_biases", "seconds", "tflite_test_accuracy", "sent_bytes",
                        "full_val_accuracy", "full_test_accuracy", "full_gap_points"):
                if key in record:
                    self._tf.summary.scalar(key, record[key])
        self._summary.flush()

    def write_metrics(self, rounds: List[Dict]) -> None:
        doc = {"config": self.config, "rounds": rounds}
        write_atomic(os.path.join(self.out_dir, "metrics.json"),
                     (json.dumps(doc, indent=2) + "\n").encode())
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=list(rounds[0]), extrasaction="ignore")
        table.writeheader()
        table.writerows(rounds)
        write_atomic(os.path.join(self.out_dir, "metrics.csv"), text.getvalue().encode())

    def write_plot(self, rounds: List[Dict]) -> str:
        """The run's figure (see `plot`), as `accuracy.png`."""
        buffer = io.BytesIO()
        plot(rounds, self.config).savefig(buffer, format="png", dpi=100)
        path = os.path.join(self.out_dir, "accuracy.png")
        write_atomic(path, buffer.getvalue())
        return path

    def log_epoch(self, round_index: int, step: str, epoch: int, values: Dict) -> None:
        """Per-epoch curves (loss, validation accuracy, learning rate) of one step.

        Each round is a TensorBoard run of its own (`tensorboard/round_NNN`),
        each step a group of tags, the epoch the x axis.
        """
        if self._round_writer is None or self._round_writer[0] != round_index:
            if self._round_writer is not None:
                self._round_writer[1].close()
            self._round_writer = (round_index, self._tf.summary.create_file_writer(
                os.path.join(self.out_dir, "tensorboard", f"round_{round_index:03d}")))
        with self._round_writer[1].as_default(step=epoch):
            for key, value in values.items():
                self._tf.summary.scalar(f"{step}/{key}", value)

    def close(self) -> None:
        if self._round_writer is not None:
            self._round_writer[1].close()
            self._round_writer = None
        self._summary.close()
