"""The training loop: data order, augmentation, optimiser steps, evaluation, and never losing work.

One run is a pure function of its configuration and seed. A single NumPy Generator, seeded once,
draws each epoch's shuffling order and then every augmentation of that epoch; a checkpoint holds
the model, the optimiser state, that generator's state (as JSON), the current epoch's order and
the position in it. Resuming therefore replays exactly the same arithmetic, so a run killed at
any moment and resumed ends with parameters bit-identical to an uninterrupted run (with the same
thread count: a different count may change the order of floating-point sums).

Files are written to a temporary name in the same folder and renamed over the old one
(`os.replace` is atomic), so a kill leaves either the previous file or the new one, never half
of one. The files in the output folder:

    checkpoint.npz   the latest state (end of each epoch, and every few minutes within one)
    best.npz         the state at the end of the epoch with the best test accuracy
    metrics.jsonl    one JSON line per finished epoch
    curves.png       loss and accuracy per epoch, train and test
    summary.json     final test accuracy, time, throughput and the configuration
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .._atomic import atomic_write
from .._blas import set_blas_threads
from .._checks import HaloRefError, read_npz
from .data import Dataset, load_dataset
from .data.augment import augment, channel_stats, normalise, pad_to_multiple
from .optim import clip_grad_norm, cosine_lr, make_optimizer

CHECKPOINT_FORMAT = "halo_ref.checkpoint"
CHECKPOINT_VERSION = 1

# Recipes that work without tuning. Fields left as None in a TrainConfig are filled from here.
RECIPES = {
    "digits": dict(model="micro", epochs=20, batch_size=64, lr=4e-3, weight_decay=0.05,
                   warmup_epochs=1.0, label_smoothing=0.1),
    "cifar10": dict(model="tiny", epochs=30, batch_size=128, lr=2e-3, weight_decay=0.05,
                    warmup_epochs=2.0, label_smoothing=0.1),
    "npz": dict(model="micro", epochs=20, batch_size=64, lr=2e-3, weight_decay=0.05,
                warmup_epochs=1.0, label_smoothing=0.0),
}  # fmt: skip

# Settings that decide the arithmetic of a run: a resumed run must use the checkpoint's values.
FIXED_ON_RESUME = (
    "dataset", "model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
    "warmup_epochs", "label_smoothing", "clip_grad", "seed", "dtype", "crop_pad", "flip",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Everything that defines a training run (None: take the dataset's recipe value)."""

    dataset: str = "digits"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad: float = 5.0
    crop_pad: int | None = None
    flip: bool | None = None
    seed: int = 0
    threads: int | None = None
    dtype: str = "float32"
    out: str | None = None
    data_dir: str | None = None
    download: bool = False
    resume: bool = False
    checkpoint_every: int = 0  # also save every N steps within an epoch (0: by time only)
    checkpoint_seconds: float = 300.0  # ... and whenever this long has passed since the last save
    eval_batch_size: int = 256

    def recipe_key(self) -> str:
        return "npz" if self.dataset.startswith("npz:") else self.dataset


class TrainingDiverged(HaloRefError):
    """The loss or the gradients became NaN or infinite; the run stopped without saving."""


# -- threads -----------------------------------------------------------------------------------
def set_threads(n: int | None) -> int | None:
    """Give the Numba kernels n threads (None: Numba's default, all cores) and OpenBLAS one.

    halo_ref parallelises in Numba's threads, and its kernels call BLAS from inside them; BLAS
    threads of its own would nest inside Numba's and oversubscribe the cores. Measured on 2
    cores: a training step of the tiny HaloNet at batch 64 took 0.49 s with 2 OpenBLAS threads
    and 0.24 s with 1. Changes this process only (set once, at the start of a run). Returns n.
    """
    if n is not None:
        if n < 1:
            raise HaloRefError(f"--threads must be >= 1, got {n}")
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    set_blas_threads(1)
    return n


# -- atomic files ------------------------------------------------------------------------------
def _write_json(path: str, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _write_jsonl(path: str, rows) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


OUTPUT_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png", "summary.json")


def _clean_stale_temps(folder: str) -> None:
    """Remove temporary files that a killed run left behind (never a finished file)."""
    prefixes = tuple(f".{name}." for name in OUTPUT_FILES)
    for name in os.listdir(folder):
        if name.startswith(prefixes) and name.endswith(".tmp"):
            os.unlink(os.path.join(folder, name))


# -- checkpoints -------------------------------------------------------------------------------
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


# -- model and data ----------------------------------------------------------------------------
def default_model_factory(name, *, num_classes, in_chans, dtype, rng):
    """Build a HaloNet from `halo_ref.models` by name."""
    try:
        from ..models import halonet
    except ImportError as exc:
        raise HaloRefError(
            f"halo_ref.models is not available ({exc}); cannot build {name!r}"
        ) from None
    return halonet(name, num_classes=num_classes, in_chans=in_chans, dtype=dtype, rng=rng)


def default_loss():
    """The (forward, backward) pair of softmax cross-entropy from halo_ref.layers."""
    from ..nn import functional as layers

    try:
        return layers.cross_entropy_forward, layers.cross_entropy_backward
    except AttributeError:
        raise HaloRefError("halo_ref.layers has no cross_entropy_forward yet") from None


class Batcher:
    """Turns uint8 images into normalised, padded float batches for one model."""

    def __init__(self, mean, std, multiple: int, dtype) -> None:
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.multiple, self.dtype = multiple, np.dtype(dtype)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: (B, H, W, C) uint8 -> (B, C, H', W') float, H' and W' multiples of the model's."""
        x = normalise(images, self.mean, self.std, self.dtype)  # B, C, H, W
        return pad_to_multiple(x, self.multiple)[0]


def evaluate(model, batcher: Batcher, images, labels, *, loss_fns=None, batch_size=256):
    """Mean cross-entropy and accuracy of `model` (in eval mode) on uint8 images (N, H, W, C)."""
    fwd, _ = loss_fns or default_loss()
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        for i in range(0, len(images), batch_size):
            logits = model.forward(batcher(images[i : i + batch_size]))
            y = labels[i : i + batch_size]
            loss, _ = fwd(logits, y)
            total_loss += float(loss) * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
    finally:
        model.train()
    n = len(images)
    return total_loss / n, correct / n


# -- the run -----------------------------------------------------------------------------------
def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill None fields from the dataset's recipe and the output folder's default name."""
    key = cfg.recipe_key()
    if key not in RECIPES:
        load_dataset(cfg.dataset)  # raises the one-line "unknown dataset" error
    filled = {k: v for k, v in RECIPES[key].items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    if cfg.out is None:
        stem = os.path.splitext(os.path.basename(cfg.dataset[4:]))[0] if key == "npz" else key
        cfg = dataclasses.replace(cfg, out=os.path.join("runs", stem))
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise HaloRefError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise HaloRefError(f"--lr must be > 0, got {cfg.lr}")
    if not 0 <= cfg.label_smoothing < 1:
        raise HaloRefError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.dtype not in ("float32", "float64"):
        raise HaloRefError(f"--dtype {cfg.dtype!r} is not supported; use float32 or float64")
    return cfg


def _merge_resumed(cfg: TrainConfig, saved: dict, path: str) -> TrainConfig:
    """The checkpoint's configuration, refusing explicit settings that contradict it."""
    clash = [
        f"{k}={getattr(cfg, k)!r} (checkpoint: {saved[k]!r})"
        for k in FIXED_ON_RESUME
        if getattr(cfg, k) is not None and k in saved and getattr(cfg, k) != saved[k]
        and not (k in ("optimizer", "momentum", "clip_grad", "seed", "dataset", "dtype")
                 and getattr(cfg, k) == getattr(TrainConfig, k))
    ]  # fmt: skip
    if clash:
        raise HaloRefError(
            f"--resume: {', '.join(clash)} differ from {path}; drop these options to resume "
            "the run as it was, or start a new run with another --out"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    keep = ("out", "threads", "data_dir", "download", "resume", "checkpoint_every",
            "checkpoint_seconds", "eval_batch_size")  # fmt: skip
    merged.update({k: getattr(cfg, k) for k in keep})
    return TrainConfig(**merged)


def _plot_curves(path: str, history: list[dict], label_smoothing: float = 0.0) -> None:
    """Draw curves.png (loss and accuracy per epoch, train and test) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import plot_training_curves, save_figure

    keys = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
    curves = {k: [h[k] for h in history] for k in keys}
    note = f" (train loss includes label smoothing {label_smoothing:g})" if label_smoothing else ""
    (ax_loss, _) = plot_training_curves(curves, title=f"training curves{note}")
    save_figure(ax_loss.figure, path, dpi=100)
    plt.close(ax_loss.figure)


def _uses_numba(module) -> bool:
    """Whether any halo attention layer inside `module` runs on the Numba backend."""
    if getattr(module, "backend", None) == "numba":
        return True
    return any(_uses_numba(child) for child in getattr(module, "_children", {}).values())


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

    model_factory(name, num_classes=, in_chans=, dtype=, rng=) builds the model (default: the
    HaloNets of halo_ref.models); loss_fns is a (forward, backward) cross-entropy pair (default:
    halo_ref.layers). `dataset` skips loading by name (for tests and notebooks).
    """
    from tqdm import tqdm

    model_factory = model_factory or default_model_factory
    fwd_loss, bwd_loss = loss_fns or default_loss()
    out = cfg.out if cfg.out is not None else resolve_config(cfg).out
    os.makedirs(out, exist_ok=True)
    _clean_stale_temps(out)
    ckpt_path, best_path = os.path.join(out, "checkpoint.npz"), os.path.join(out, "best.npz")

    resumed = None
    if os.path.exists(ckpt_path):
        if not cfg.resume:
            raise HaloRefError(
                f"{out} already holds a run (checkpoint.npz); pass --resume to continue it, "
                "or choose another --out"
            )
        resumed = load_checkpoint(ckpt_path)
        cfg = _merge_resumed(cfg, resumed[2]["config"], ckpt_path)
    elif cfg.resume:
        log(f"--resume: no checkpoint in {out} yet; starting from the beginning")
    cfg = resolve_config(cfg)
    set_threads(cfg.threads)
    dtype = np.dtype(cfg.dtype)

    data = (
        dataset
        if dataset is not None
        else load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download)
    )
    crop_pad = data.crop_pad if cfg.crop_pad is None else cfg.crop_pad
    flip = data.flip if cfg.flip is None else cfg.flip
    cfg = dataclasses.replace(cfg, crop_pad=crop_pad, flip=flip)
    H, W, C = data.image_shape
    model = model_factory(
        cfg.model, num_classes=data.num_classes, in_chans=C, dtype=dtype, rng=cfg.seed
    )
    multiple = int(getattr(model, "input_multiple", 1))
    batcher = Batcher(*channel_stats(data.x_train), multiple, dtype)
    Hp, Wp = (-(-H // multiple) * multiple, -(-W // multiple) * multiple)
    if (Hp, Wp) != (H, W):
        log(
            f"note: {H}x{W} images are zero-padded to {Hp}x{Wp} (model {cfg.model!r} needs "
            f"multiples of {multiple})"
        )
    params = model.params
    optimizer = make_optimizer(
        cfg.optimizer, params, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    n_train = len(data.x_train)
    steps_per_epoch = -(-n_train // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    rng = np.random.Generator(np.random.PCG64(cfg.seed))

    # position in the run; overwritten by a checkpoint
    epoch, batch, step, history, best_acc, order = 0, 0, 0, [], -1.0, None
    sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    elapsed = 0.0
    if resumed is not None:
        model_state, optim_state, meta, saved_order = resumed
        if meta["dataset_shape"] != [n_train, H, W, C]:
            raise HaloRefError(
                f"--resume: {ckpt_path} was trained on {meta['dataset_shape']} (N, H, W, C) "
                f"images but {cfg.dataset} gives {[n_train, H, W, C]}"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        rng.bit_generator.state = meta["rng"]
        epoch, batch, step = meta["epoch"], meta["batch"], meta["step"]
        history, best_acc, sums = meta["history"], meta["best_acc"], meta["sums"]
        elapsed = meta["elapsed"]
        order = saved_order if batch > 0 else None
        log(f"resuming {out} at epoch {epoch + 1}, step {step}")

    def meta_now():
        return {
            "config": dataclasses.asdict(cfg), "epoch": epoch, "batch": batch, "step": step,
            "rng": rng.bit_generator.state, "history": history, "best_acc": best_acc,
            "sums": sums, "elapsed": elapsed, "num_classes": data.num_classes, "in_chans": C,
            "dataset_shape": [n_train, H, W, C], "mean": batcher.mean.tolist(),
            "std": batcher.std.tolist(), "input_multiple": multiple,
        }  # fmt: skip

    def save(path, with_order):
        save_checkpoint(
            path,
            model_state=model.state_dict(),
            optim_state=optimizer.state_dict(),
            meta=meta_now(),
            order=order if with_order else None,
        )

    def last_good():
        if not os.path.exists(ckpt_path):
            return "no checkpoint was written yet"
        m = load_checkpoint(ckpt_path)[2]
        return f"the last good checkpoint is {ckpt_path} (epoch {m['epoch']}, step {m['step']})"

    n_params = sum(int(p.size) for p in params.values())
    if resumed is None:
        log(
            f"training {cfg.model!r} ({n_params:,} parameters) on {cfg.dataset}: {n_train} "
            f"train / {len(data.x_test)} test images, {cfg.epochs} epochs of {steps_per_epoch} "
            f"steps, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} -> {out}"
        )
    if _uses_numba(model):
        # the first run compiles the kernels (tens of seconds): say so rather than look stuck
        log("preparing the Numba kernels (compiled on the first run, then cached on disk) ...")
        from ..attention.kernels import warm_up

        log(f"kernels ready in {warm_up(dtypes=(np.dtype(cfg.dtype),)):.1f} s")
    last_save = time.monotonic()
    while epoch < cfg.epochs:
        if batch == 0:
            order = rng.permutation(n_train)
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        bar = tqdm(
            total=steps_per_epoch,
            initial=batch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        while batch < steps_per_epoch:
            t0 = time.perf_counter()
            idx = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
            x = augment(batcher(data.x_train[idx]), rng, crop_pad=crop_pad, flip=flip)
            y = data.y_train[idx]
            lr = cosine_lr(step, total_steps=total_steps, base_lr=cfg.lr, warmup_steps=warmup_steps)
            logits = model.forward(x)
            loss, cache = fwd_loss(logits, y, label_smoothing=cfg.label_smoothing)
            bad = None if math.isfinite(float(loss)) else f"loss is {float(loss)}"
            if bad is None:
                model.zero_grad()
                model.backward(bwd_loss(cache))
                norm = clip_grad_norm(model.grads, cfg.clip_grad)
                bad = None if math.isfinite(norm) else f"gradient norm is {norm}"
            if bad is not None:
                bar.close()
                raise TrainingDiverged(
                    f"{bad} at step {step} (epoch {epoch + 1}, batch {batch + 1}); stopped "
                    f"without saving: {last_good()}. Lower --lr or --clip-grad and start anew"
                )
            optimizer.step(model.grads, lr)
            dt = time.perf_counter() - t0
            step, batch = step + 1, batch + 1
            sums["loss"] += float(loss) * len(y)
            sums["correct"] += int((logits.argmax(axis=1) == y).sum())
            sums["seen"] += len(y)
            sums["seconds"] += dt
            elapsed += dt
            bar.set_postfix_str(
                f"loss {sums['loss'] / sums['seen']:.3f}, "
                f"acc {100 * sums['correct'] / sums['seen']:.1f}%, "
                f"{sums['seen'] / max(sums['seconds'], 1e-9):.0f} img/s",
                refresh=False,
            )
            bar.update(1)
            due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            if batch < steps_per_epoch and (
                due or time.monotonic() - last_save > cfg.checkpoint_seconds
            ):
                save(ckpt_path, with_order=True)
                last_save = time.monotonic()
        bar.close()
        t0 = time.perf_counter()
        test_loss, test_acc = evaluate(
            model,
            batcher,
            data.x_test,
            data.y_test,
            loss_fns=(fwd_loss, bwd_loss),
            batch_size=cfg.eval_batch_size,
        )
        elapsed += time.perf_counter() - t0
        epoch, batch = epoch + 1, 0
        history.append({
            "epoch": epoch, "step": step, "lr": lr,
            "train_loss": sums["loss"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
            "test_loss": test_loss, "test_acc": test_acc,
            "images_per_s": sums["seen"] / max(sums["seconds"], 1e-9),
            "epoch_seconds": sums["seconds"], "elapsed_seconds": elapsed,
        })  # fmt: skip
        h = history[-1]
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {h['train_loss']:.4f} acc "
            f"{100 * h['train_acc']:5.1f}%  test loss {test_loss:.4f} acc {100 * test_acc:5.1f}%  "
            f"{h['images_per_s']:.0f} img/s  {h['epoch_seconds']:.1f} s"
        )
        if test_acc > best_acc:
            best_acc = test_acc
            save(best_path, with_order=False)  # before checkpoint.npz: a kill in between redoes it
        save(ckpt_path, with_order=False)
        last_save = time.monotonic()
        _write_jsonl(os.path.join(out, "metrics.jsonl"), history)
        _plot_curves(os.path.join(out, "curves.png"), history, cfg.label_smoothing)

    final = history[-1]
    rates = [h["images_per_s"] for h in history]
    summary = {
        "test_accuracy": final["test_acc"], "test_loss": final["test_loss"],
        "best_test_accuracy": best_acc,
        "best_epoch": max(history, key=lambda h: h["test_acc"])["epoch"],
        "epochs": len(history), "steps": step, "train_seconds": elapsed,
        "images_per_second_median": float(np.median(rates)), "parameters": n_params,
        "input_hw": [Hp, Wp], "config": dataclasses.asdict(cfg),
    }  # fmt: skip
    _write_jsonl(os.path.join(out, "metrics.jsonl"), history)
    _plot_curves(os.path.join(out, "curves.png"), history, cfg.label_smoothing)
    _write_json(os.path.join(out, "summary.json"), summary)
    log(
        f"test accuracy: {100 * final['test_acc']:.2f}% ({cfg.dataset}, {len(data.x_test)} "
        f"images) after {len(history)} epochs, {elapsed:.0f} s of training; files in {out}"
    )
    return summary


def evaluate_checkpoint(
    path: str,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    threads: int | None = None,
    batch_size: int = 256,
    model_factory=None,
    loss_fns=None,
) -> dict:
    """Test loss and accuracy of the model saved in checkpoint `path`.

    The images are normalised with the training statistics stored in the checkpoint. `dataset`
    defaults to the one the checkpoint was trained on; another must have the same image size.
    """
    model_state, _, meta, _ = load_checkpoint(path)
    cfg = meta["config"]
    set_threads(threads)
    spec = dataset or cfg["dataset"]
    data = load_dataset(spec, data_dir=data_dir or cfg.get("data_dir"))
    saved_hwc = list(meta["dataset_shape"][1:])
    if list(data.image_shape) != saved_hwc:
        raise HaloRefError(
            f"{path} was trained on {saved_hwc} (H, W, C) images but --dataset {spec} has "
            f"{list(data.image_shape)}"
        )
    if data.num_classes > meta["num_classes"]:
        raise HaloRefError(
            f"--dataset {spec} has {data.num_classes} classes but the model in {path} predicts "
            f"{meta['num_classes']}"
        )
    dtype = np.dtype(cfg["dtype"])
    model = (model_factory or default_model_factory)(
        cfg["model"], num_classes=meta["num_classes"], in_chans=saved_hwc[2], dtype=dtype, rng=0
    )
    model.load_state_dict(model_state)
    batcher = Batcher(meta["mean"], meta["std"], meta["input_multiple"], dtype)
    loss, acc = evaluate(
        model, batcher, data.x_test, data.y_test, loss_fns=loss_fns, batch_size=batch_size
    )
    n = len(data.x_test)
    return {
        "test_loss": loss,
        "test_accuracy": acc,
        "correct": round(acc * n),
        "images": n,
        "dataset": spec,
        "checkpoint": path,
        "epoch": meta["epoch"],
    }
