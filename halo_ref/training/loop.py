"""The training loop: data order, augmentation, optimiser steps, evaluation, never losing work.

`train` prepares a run (`_prepare`: the output folder, a checkpoint to resume, the data, the
model, the optimiser), then runs it: epochs of steps (`_step`), each epoch closed by an
evaluation and its files (`_end_epoch`). The run's position and record are a
`halo_ref.training.state.RunState`; its files, written so that a kill at any moment loses
nothing, a `halo_ref.training.checkpoint.RunFolder`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .._checks import HaloRefError, NonFiniteError, arg, check_out_folder
from .._runtime import cache_dir
from ..attention.layer import HaloAttention
from ..backend import resolve, warm_up
from ..models import halonet
from ..nn.functional import cross_entropy_backward, cross_entropy_forward
from .checkpoint import RunFolder, environment, load_checkpoint
from .config import (
    TrainConfig,
    check_config,
    default_out,
    merge_resumed,
    resolve_config,
    set_threads,
    threads_note,
)
from .data import Dataset, dataset_kind, load_dataset, split_validation
from .data.augment import augment, channel_stats, padded_size
from .data.dataset import check_classes
from .data.splits import VAL_SPLIT_SEED
from .evaluate import Batcher, evaluate
from .optim import Optimizer, clip_grad_norm, cosine_lr, make_optimizer
from .recipes import choose_recipe
from .state import RunState


class TrainingDiverged(HaloRefError):
    """The loss, the gradients, the activations, the parameters or the evaluation loss became
    NaN or infinite; the run stopped without saving, so every checkpoint it left is finite."""


def train(
    cfg: TrainConfig,
    *,
    model_factory=None,
    loss_fns=None,
    log=print,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> dict:
    """Run (or resume) a training run; returns the summary written to summary.json.

    model_factory(name, num_classes=, in_chans=, dtype=, rng=) builds the model (default:
    `halo_ref.models.halonet`); loss_fns is a (forward, backward) cross-entropy pair (default:
    `halo_ref.nn.functional`'s). `dataset` skips loading by name (for tests and notebooks).
    """
    loss_fns = loss_fns or (cross_entropy_forward, cross_entropy_backward)
    run = _prepare(cfg, model_factory or halonet, loss_fns, dataset, log, progress)
    cfg, state = run.cfg, run.state
    last_save = time.monotonic()
    while state.epoch < cfg.epochs:
        state.begin_epoch(run.n_train)
        bar = tqdm(total=run.steps_per_epoch, initial=state.batch, unit="batch",
                   desc=f"epoch {state.epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)  # fmt: skip
        with bar:
            while state.batch < run.steps_per_epoch:
                lr = run.lr()
                _step(run, lr)
                bar.set_postfix_str(state.progress(), refresh=False)
                bar.update(1)
                due = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
                if state.batch < run.steps_per_epoch and (
                    due or time.monotonic() - last_save > cfg.checkpoint_seconds
                ):
                    run.save(run.folder.checkpoint, within_epoch=True)
                    last_save = time.monotonic()
        _end_epoch(run, lr, log)
        last_save = time.monotonic()
    return _finish(run, log)


@dataclass
class _Run:
    """Everything a run works with, built once by `_prepare`."""

    cfg: TrainConfig  # resolved: no None left; `threads` is the count the kernels use
    folder: RunFolder
    state: RunState
    data: Dataset
    model: object
    optimizer: Optimizer
    batcher: Batcher
    loss_fns: tuple
    info: dict  # what a checkpoint records about the data and the model's input
    input_hw: list  # the images' size once padded for the model
    steps_per_epoch: int
    warmup_steps: int

    @property
    def n_train(self) -> int:
        return len(self.data.x_train)

    def lr(self) -> float:
        """The learning rate of the next step."""
        total = self.cfg.epochs * self.steps_per_epoch
        return cosine_lr(self.state.step, total_steps=total, base_lr=self.cfg.lr,
                         warmup_steps=self.warmup_steps)  # fmt: skip

    def save(self, path: str, *, within_epoch: bool) -> None:
        """A checkpoint at `path`; within an epoch it keeps the epoch's order of images."""
        meta = {"config": dataclasses.asdict(self.cfg), **self.state.meta(), **self.info,
                "environment": environment(self.cfg.threads)}  # fmt: skip
        order = self.state.order if within_epoch else None
        self.folder.save(path, self.model, self.optimizer, meta, order)


# A non-finite value is found and reported with its step (`_diverged`); NumPy's overflow
# warnings on the way would only print lines of noise before that one-line error.
_QUIET = np.errstate(over="ignore", invalid="ignore", divide="ignore")


@_QUIET
def _step(run: _Run, lr: float) -> None:
    """One optimiser step on the next batch of the epoch's order. A non-finite activation,
    loss, gradient norm or updated parameter raises `TrainingDiverged` before anything is
    saved, so no checkpoint ever holds one."""
    cfg, state, model = run.cfg, run.state, run.model
    fwd_loss, bwd_loss = run.loss_fns
    t0 = time.perf_counter()
    idx = state.batch_indices(cfg.batch_size)
    x = augment(run.batcher(run.data.x_train[idx]), state.rng, crop_pad=cfg.crop_pad, flip=cfg.flip)
    y = run.data.y_train[idx]
    try:
        logits = model.forward(x)
    except NonFiniteError:  # the data are finite: the weights made the activations overflow
        raise _diverged(run, "the forward pass gave NaN or inf activations") from None
    loss, cache = fwd_loss(logits, y, label_smoothing=cfg.label_smoothing)
    if not math.isfinite(float(loss)):
        raise _diverged(run, f"the loss is {float(loss)}")
    model.zero_grad()
    model.backward(bwd_loss(cache))
    norm = clip_grad_norm(model.grads, cfg.clip_grad)
    if not math.isfinite(norm):
        raise _diverged(run, f"the gradient norm is {norm}")
    run.optimizer.step(model.grads, lr)
    if not all(np.isfinite(p).all() for p in model.params.values()):
        raise _diverged(run, f"the update (learning rate {lr:g}) made parameters NaN or inf")
    seconds = time.perf_counter() - t0
    state.record_step(float(loss), int((logits.argmax(axis=1) == y).sum()), len(y), seconds)


def _diverged(run: _Run, what: str, *, epoch_end: bool = False) -> TrainingDiverged:
    """The error that stops a diverged run: where (1-based step, epoch and batch), what, the
    last checkpoint it can be taken up from, and what to change."""
    cfg, state = run.cfg, run.state
    where = (
        f"at the end of epoch {state.epoch + 1}" if epoch_end else
        f"at step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch + 1} of "
        f"{run.steps_per_epoch})"
    )  # fmt: skip
    if cfg.clip_grad > 0:
        fix = f"lower {arg('lr')} (now {cfg.lr:g}) or {arg('clip_grad')} (now {cfg.clip_grad:g})"
    else:  # clipping is off: lowering it is no advice
        fix = f"lower {arg('lr')} (now {cfg.lr:g}) or clip the gradients ({arg('clip_grad', 5)})"
    return TrainingDiverged(
        f"training diverged {where}: {what}; stopped before saving; {run.folder.last_good()}; "
        f"{fix}, and start again in another folder ({arg('out')})"
    )


@_QUIET
def _end_epoch(run: _Run, lr: float, log) -> None:
    """Evaluate the model on the evaluation split (the test images, or those held out by
    --val-split), record the epoch and write its files: best.npz when the accuracy improved,
    the metrics and curves, and the checkpoint last (a kill before it redoes the epoch, and
    rewrites the others)."""
    cfg, state = run.cfg, run.state
    t0 = time.perf_counter()
    data, split = run.data, run.data.eval_split
    try:
        loss, acc = evaluate(
            run.model, run.batcher, data.x_test, data.y_test, loss_fns=run.loss_fns,
            batch_size=cfg.eval_batch_size,
        )  # fmt: skip
    except NonFiniteError:
        raise _diverged(
            run, f"the {split} images gave NaN or inf activations", epoch_end=True
        ) from None
    if not math.isfinite(loss):  # a checkpoint is kept only if its losses are finite
        raise _diverged(run, f"the {split} loss is {loss}", epoch_end=True)
    improved = state.end_epoch(loss, acc, lr, time.perf_counter() - t0, split=split)
    h = state.history[-1]
    log(
        f"epoch {state.epoch:3d}/{cfg.epochs}  train loss {h['train_loss']:.4f} acc "
        f"{100 * h['train_acc']:5.1f}%  {split} loss {loss:.4f} acc {100 * acc:5.1f}%  "
        f"{h['images_per_s']:.0f} img/s  {h['epoch_seconds']:.1f} s"
    )
    if improved:
        run.save(run.folder.best, within_epoch=False)
    run.folder.write_metrics(state.history, cfg.label_smoothing)
    run.save(run.folder.checkpoint, within_epoch=False)


def _finish(run: _Run, log) -> dict:
    """Write summary.json and say where the files are."""
    cfg, state, split = run.cfg, run.state, run.data.eval_split
    final = state.history[-1]
    rates = [h["images_per_s"] for h in state.history]
    summary = {
        f"{split}_accuracy": final[f"{split}_acc"], f"{split}_loss": final[f"{split}_loss"],
        f"best_{split}_accuracy": state.best_acc,
        "best_epoch": max(state.history, key=lambda h: h[f"{split}_acc"])["epoch"],
        "evaluated_on": _evaluated_on(run.data, cfg),
        "epochs": len(state.history), "steps": state.step, "train_seconds": state.elapsed,
        "images_per_second_median": float(np.median(rates)), "parameters": _count(run.model),
        "input_hw": run.input_hw, "config": dataclasses.asdict(cfg),
        "environment": environment(cfg.threads),
    }  # fmt: skip
    run.folder.write_summary(summary)
    word = "validation" if split == "val" else "test"
    log(
        f"{word} accuracy: {100 * final[f'{split}_acc']:.2f}% ({cfg.dataset}, "
        f"{len(run.data.x_test)} images) after {len(state.history)} epochs, {state.elapsed:.0f} s "
        f"of training; files in {run.folder.path}"
    )
    return summary


def _evaluated_on(data: Dataset, cfg: TrainConfig) -> str:
    """Which images the epochs were scored on, as a phrase (for the first line and summary)."""
    if data.eval_split == "val":
        return (
            f"a validation split of {len(data.x_test)} training images (--val-split "
            f"{cfg.val_split:g}, stratified, seed {VAL_SPLIT_SEED}); the test set is not used"
        )
    return f"the {len(data.x_test)} test images"


# -- preparing a run ------------------------------------------------------------------------------
def _prepare(cfg: TrainConfig, model_factory, loss_fns, dataset, log, progress) -> _Run:
    """The folder, the checkpoint to resume (refusing to overwrite a run), the configuration,
    the data, the recipe, the model and the optimiser, each checked before the first step."""
    check_config(cfg)
    folder = RunFolder(check_out_folder(cfg.out if cfg.out is not None else default_out(cfg)))
    cfg, resumed = _open(cfg, folder, log)
    threads = set_threads(cfg.threads)
    notes = [note] if (note := threads_note(cfg.threads, threads)) else []
    saved = resumed[2]["config"].get("threads") if resumed is not None else None
    if saved not in (None, threads):  # sums may be cut differently: say so, do not refuse
        notes.append(
            f"the checkpoint was trained with {saved} threads and this session uses {threads}: "
            f"the result may differ from an uninterrupted run in the last bits (pass "
            f"{arg('threads', saved)} to match it)"
        )
    dtype = np.dtype(cfg.dtype)
    if dataset is None:
        dataset = load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size,
            test_split=cfg.test_split, skip_bad_images=cfg.skip_bad_images, progress=progress,
        )  # fmt: skip
    data = dataset
    notes += check_classes(data, cfg.dataset)
    if cfg.val_split:
        data = split_validation(data, cfg.val_split)  # the evaluation split is held out now
    H, W, C = data.image_shape
    recipe, why = choose_recipe(dataset_kind(cfg.dataset), data.image_shape, cfg.recipe)
    cfg = dataclasses.replace(resolve_config(cfg, recipe), threads=threads)  # the threads used
    model = model_factory(
        cfg.model, num_classes=data.num_classes, in_chans=C, dtype=dtype, rng=cfg.seed
    )
    multiple = int(getattr(model, "input_multiple", 1))
    batcher = Batcher(*channel_stats(data.x_train), multiple, dtype)
    Hp, Wp = padded_size(H, multiple), padded_size(W, multiple)
    optimizer = make_optimizer(
        cfg.optimizer, model.params, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    n_train = len(data.x_train)
    steps_per_epoch = -(-n_train // cfg.batch_size)
    info = {
        "num_classes": data.num_classes, "in_chans": C, "dataset_shape": [n_train, H, W, C],
        "mean": batcher.mean.tolist(), "std": batcher.std.tolist(), "input_multiple": multiple,
        "class_names": list(data.class_names), "pixel_max": data.pixel_max,
        "eval_split": data.eval_split,
    }  # fmt: skip
    if resumed is None:
        state = RunState.start(cfg.seed)
        log(_first_line(cfg, why, model, data, steps_per_epoch, folder))
    else:
        model_state, optim_state, meta, order = resumed
        if meta["dataset_shape"] != info["dataset_shape"]:
            raise HaloRefError(
                f"--resume: {folder.checkpoint} was trained on {meta['dataset_shape']} (N, H, W, "
                f"C) images but {cfg.dataset} gives {info['dataset_shape']}"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        state = RunState.resume(cfg.seed, meta, order)
        log(f"resuming {folder.path} at epoch {state.epoch + 1}, step {state.step}")
    for note in [*data.notes, *notes]:
        log(f"note: {note}")
    if (Hp, Wp) != (H, W):
        log(
            f"note: {H}x{W} images are zero-padded to {Hp}x{Wp} (model {cfg.model!r} needs "
            f"multiples of {multiple})"
        )
    if _uses_numba(model):
        # the first run compiles the kernels (tens of seconds): say so rather than look stuck
        log(f"preparing the Numba kernels (compiled on the first run, cached in {cache_dir()}) ...")
        log(f"kernels ready in {warm_up(dtypes=(dtype,)):.1f} s")
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    run = _Run(cfg, folder, state, data, model, optimizer, batcher, loss_fns, info, [Hp, Wp],
               steps_per_epoch, warmup_steps)  # fmt: skip
    # every input is checked: only now the folder is made, and a new run's first file is its
    # checkpoint (step 0), so that a folder holding any run file always holds one to resume
    folder.prepare()
    if resumed is None:
        run.save(folder.checkpoint, within_epoch=False)
    return run


def _first_line(cfg: TrainConfig, why: str, model, data: Dataset, steps: int, folder) -> str:
    """The run's first line: what was chosen (recipe, model, schedule, augmentation, the
    evaluation split) and why."""
    aug = f"crop-pad {cfg.crop_pad}" if cfg.crop_pad else "no random crops"
    aug += ", flips" if cfg.flip else ", no flips"
    return (
        f"training {cfg.model!r} ({_count(model):,} parameters) on {cfg.dataset}, recipe "
        f"{cfg.recipe!r} ({why}): {len(data.x_train)} train images, {cfg.epochs} epochs of "
        f"{steps} steps, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, label smoothing "
        f"{cfg.label_smoothing:g}, {aug}; evaluated on {_evaluated_on(data, cfg)} -> {folder.path}"
    )


def _open(cfg: TrainConfig, folder: RunFolder, log):
    """The configuration to run and the checkpoint to resume (None: a new run). A folder that
    holds any file of a run is only ever continued, with resume, never overwritten."""
    found = folder.outputs()
    out, resume = arg("out", folder.path), arg("resume", True)
    if "checkpoint.npz" in found:
        if not cfg.resume:
            raise HaloRefError(
                f"{out} already holds a run ({', '.join(found)}); continue it with {resume}, or "
                f"choose another folder for {arg('out')}"
            )
        resumed = load_checkpoint(folder.checkpoint)
        return merge_resumed(cfg, resumed[2]["config"], folder.checkpoint), resumed
    if found:
        # every run writes checkpoint.npz first, so these files are not an unfinished run of
        # ours: a finished one whose checkpoint was removed, or someone else's
        why = "there is no run to continue" if cfg.resume else "a new run would overwrite them"
        hint = ""
        if "best.npz" in found:
            hint = "its best.npz can still be evaluated (halo-ref evaluate --checkpoint "
            hint += f"{folder.best}); "
        raise HaloRefError(
            f"{out} holds {', '.join(found)} but no checkpoint.npz, so {why}; {hint}move them "
            f"away or choose another folder for {arg('out')}"
        )
    if cfg.resume:
        log(f"{resume}: no checkpoint in {folder.path} yet; starting from the beginning")
    return cfg, None


def _count(model) -> int:
    return sum(int(p.size) for p in model.params.values())


def _uses_numba(module, backend=None) -> bool:
    """Whether a halo attention layer inside `module` runs on the Numba backend (a module's own
    backend covers its children)."""
    backend = getattr(module, "backend", None) or backend
    if isinstance(module, HaloAttention):
        return resolve(backend).name == "numba"
    return any(_uses_numba(child, backend) for child in module.children().values())
