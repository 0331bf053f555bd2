"""Where a training run is: its position, its random stream, and what it has measured so far.

One run is a pure function of its configuration and seed. A single NumPy Generator, seeded once,
draws each epoch's shuffling order and then every augmentation of that epoch; a checkpoint holds
the model, the optimiser state and this `RunState` (the generator's state as JSON, the current
epoch's order and the position in it). Resuming therefore replays exactly the same arithmetic,
so a run killed at any moment and resumed ends with parameters bit-identical to an
uninterrupted run (with the same thread count: a different count may change the order of
floating-point sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _no_sums() -> dict:
    return {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


@dataclass
class RunState:
    """The run's position and record: everything a checkpoint restores besides the model and
    the optimiser."""

    rng: np.random.Generator  # the run's one random stream: orders, then augmentations
    epoch: int = 0  # finished epochs
    batch: int = 0  # finished batches of the current epoch
    step: int = 0  # optimiser steps of the whole run
    order: np.ndarray | None = None  # the current epoch's order of the training images
    sums: dict = field(default_factory=_no_sums)  # the current epoch's training totals
    history: list = field(default_factory=list)  # one dict per finished epoch
    best_acc: float = -1.0
    elapsed: float = 0.0  # seconds of training and evaluation, over every session

    @classmethod
    def start(cls, seed: int) -> RunState:
        return cls(np.random.Generator(np.random.PCG64(seed)))

    @classmethod
    def resume(cls, seed: int, meta: dict, order: np.ndarray) -> RunState:
        """The state saved in a checkpoint's `meta` (and its `order`, used within an epoch)."""
        state = cls.start(seed)
        state.rng.bit_generator.state = meta["rng"]
        state.epoch, state.batch, state.step = meta["epoch"], meta["batch"], meta["step"]
        state.history, state.best_acc, state.sums = meta["history"], meta["best_acc"], meta["sums"]
        state.elapsed = meta["elapsed"]
        state.order = order if state.batch > 0 else None
        return state

    def meta(self) -> dict:
        """The state for a checkpoint's meta (JSON); the order is saved as an array beside it."""
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "rng": self.rng.bit_generator.state, "history": self.history,
            "best_acc": self.best_acc, "sums": self.sums, "elapsed": self.elapsed,
        }  # fmt: skip

    def begin_epoch(self, n_train: int) -> None:
        """A new epoch draws its order (a resumed one keeps the saved order and totals)."""
        if self.batch == 0:
            self.order = self.rng.permutation(n_train)
            self.sums = _no_sums()

    def batch_indices(self, batch_size: int) -> np.ndarray:
        return self.order[self.batch * batch_size : (self.batch + 1) * batch_size]

    def record_step(self, loss: float, correct: int, seen: int, seconds: float) -> None:
        self.step, self.batch = self.step + 1, self.batch + 1
        self.sums["loss"] += loss * seen
        self.sums["correct"] += correct
        self.sums["seen"] += seen
        self.sums["seconds"] += seconds
        self.elapsed += seconds

    def progress(self) -> str:
        """The current epoch's training loss, accuracy and speed, for the progress bar."""
        s = self.sums
        return (
            f"loss {s['loss'] / s['seen']:.3f}, acc {100 * s['correct'] / s['seen']:.1f}%, "
            f"{s['seen'] / max(s['seconds'], 1e-9):.0f} img/s"
        )

    def end_epoch(
        self, loss: float, acc: float, lr: float, seconds: float, *, split: str = "test"
    ) -> bool:
        """Record the finished epoch, scored on the evaluation split `split` ("test" or "val":
        its loss and accuracy are recorded as "<split>_loss", "<split>_acc"; the evaluation took
        `seconds`); returns whether its accuracy is the best so far."""
        self.elapsed += seconds
        self.epoch, self.batch = self.epoch + 1, 0
        s = self.sums
        self.history.append({
            "epoch": self.epoch, "step": self.step, "lr": lr,
            "train_loss": s["loss"] / s["seen"], "train_acc": s["correct"] / s["seen"],
            f"{split}_loss": loss, f"{split}_acc": acc,
            "images_per_s": s["seen"] / max(s["seconds"], 1e-9),
            "epoch_seconds": s["seconds"], "elapsed_seconds": self.elapsed,
        })  # fmt: skip
        if acc > self.best_acc:
            self.best_acc = acc
            return True
        return False
