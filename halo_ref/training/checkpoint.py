"""The files of a training run, written so that no kill ever loses work.

Files are written to a temporary name in the same folder and renamed over the old one
(`os.replace` is atomic), so a kill leaves either the previous file or the new one, never half
of one. The files in the output folder (`RunFolder`)::

    checkpoint.npz   the latest state (before the first step, at the end of each epoch, and
                     every few minutes within one): always the first file of a run
    best.npz         the state at the end of the epoch with the best accuracy on the evaluation
                     split (the test images, or with --val-split the held-out training images)
    metrics.jsonl    one JSON line per finished epoch
    curves.png       loss and accuracy per epoch, train and test (or validation)
    summary.json     final test accuracy, time, throughput and the configuration

A checkpoint is an .npz of plain arrays: "model/<name>" (parameters and buffers), "optim/<name>"
(the optimiser's state), "order" (the current epoch's order of the training images, when saved
within an epoch) and "meta", a JSON string with the configuration and the run's position
(`halo_ref.training.state.RunState`).
"""

from __future__ import annotations

import json
import os
import platform

import numba
import numpy as np

from .. import __version__
from .._atomic import atomic_write
from .._checks import HaloRefError, make_folder, read_npz
from ..viz import plot_training_curves, save_figure

CHECKPOINT_FORMAT = "halo_ref.checkpoint"
CHECKPOINT_VERSION = 1
OUTPUT_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png", "summary.json")


def environment(threads: int) -> dict:
    """What a run's results depend on besides its configuration: the versions of halo_ref,
    NumPy, Numba and Python, the threads the kernels used and Numba's threading layer (None
    before any parallel kernel ran). Checkpoints and summary.json record it."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this process
        layer = None
    return {
        "halo_ref": __version__, "numpy": np.__version__, "numba": numba.__version__,
        "python": platform.python_version(), "threads": threads, "threading_layer": layer,
    }  # fmt: skip


def save_checkpoint(
    path: str, *, model_state: dict, optim_state: dict, meta: dict, order: np.ndarray | None = None
) -> None:
    """Write a checkpoint .npz atomically: "model/*" and "optim/*" arrays, "order", "meta" (JSON)."""
    arrays = {f"model/{k}": v for k, v in model_state.items()}
    arrays.update({f"optim/{k}": v for k, v in optim_state.items()})
    arrays["order"] = np.asarray(order if order is not None else [], dtype=np.int64)
    arrays["meta"] = np.array(
        json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta})
    )
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str) -> tuple[dict, dict, dict, np.ndarray]:
    """Read a checkpoint: returns (model_state, optim_state, meta, order).

    A missing, truncated or foreign file raises a one-line HaloRefError naming the file.
    """
    arrays = read_npz(
        path,
        missing=f"checkpoint {path} does not exist",
        not_npz=f"{path} is not an .npz file; pass a checkpoint.npz or best.npz written by "
        "halo-ref train",
        unreadable=f"{path} is not a readable checkpoint (truncated or not an .npz: {{error}}); "
        "use another checkpoint (best.npz?) or start a new run with another --out",
    )
    meta_arr = arrays.pop("meta", None)
    try:
        meta = json.loads(str(meta_arr[()])) if meta_arr is not None else None
    except (ValueError, TypeError, IndexError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise HaloRefError(
            f"{path} is an .npz file but not a halo_ref checkpoint (no valid 'meta')"
        )
    if meta.get("version") != CHECKPOINT_VERSION:
        raise HaloRefError(
            f"{path} is a checkpoint of format version {meta.get('version')}; this halo_ref "
            f"reads version {CHECKPOINT_VERSION}"
        )
    model_state = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    optim_state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    return model_state, optim_state, meta, arrays.get("order", np.zeros(0, np.int64))


class RunFolder:
    """The output folder of one run and every file the run writes there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.checkpoint, self.best, self.metrics, self.curves, self.summary = (
            os.path.join(path, name) for name in OUTPUT_FILES
        )

    def outputs(self) -> list[str]:
        """The names of the run files (`OUTPUT_FILES`) the folder holds, in that order."""
        return [n for n in OUTPUT_FILES if os.path.exists(os.path.join(self.path, n))]

    def prepare(self) -> None:
        """Create the folder, and remove temporary files a killed run left (never a finished
        file)."""
        make_folder(self.path)
        prefixes = tuple(f".{name}." for name in OUTPUT_FILES)
        for name in os.listdir(self.path):
            if name.startswith(prefixes) and name.endswith(".tmp"):
                os.unlink(os.path.join(self.path, name))

    def save(self, path, model, optimizer, meta: dict, order=None) -> None:
        """A checkpoint of the model, the optimiser and the run's `meta` at `path` (one of
        `self.checkpoint`, `self.best`); `order` only within an epoch."""
        save_checkpoint(
            path,
            model_state=model.state_dict(),
            optim_state=optimizer.state_dict(),
            meta=meta,
            order=order,
        )

    def last_good(self) -> str:
        """Where a diverged run can be taken up again, as a phrase for its error message."""
        if not os.path.exists(self.checkpoint):
            return "no checkpoint was written yet"
        meta = load_checkpoint(self.checkpoint)[2]
        if meta["step"] == 0:
            return "no step had been saved yet"
        return (
            f"the last good checkpoint is {self.checkpoint} (epoch {meta['epoch']}, step "
            f"{meta['step']})"
        )

    def write_metrics(self, history: list[dict], label_smoothing: float = 0.0) -> None:
        """metrics.jsonl (one line per epoch) and curves.png from the run's history."""
        lines = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write(self.metrics, lambda f: f.write(lines.encode()))
        _plot_curves(self.curves, history, label_smoothing)

    def write_summary(self, summary: dict) -> None:
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.summary, lambda f: f.write(text.encode()))


def _plot_curves(path: str, history: list[dict], label_smoothing: float) -> None:
    """Draw curves.png (loss and accuracy per epoch, train and test) atomically."""
    # pyplot on the headless backend, chosen here, when a run draws: never at import time
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
    curves = {k: [h[k] for h in history] for k in keys if k in history[0]}
    note = f" (train loss includes label smoothing {label_smoothing:g})" if label_smoothing else ""
    (ax_loss, _) = plot_training_curves(curves, title=f"training curves{note}")
    save_figure(ax_loss.figure, path, dpi=100)
    plt.close(ax_loss.figure)
