"""Input validation with one-line messages.

Every public entry point checks its arguments here, before any NumPy call can fail deep inside
with an unhelpful traceback. Each message names the argument, what was wrong, and the fix.

One message serves two readers. Called from Python, it names the keyword argument
(`lr=inf`); under the `halo-ref` command line, which wraps its work in `flag_names()`, the
same message names the flag (`--lr inf`). Messages name arguments through `arg`, never by
spelling a flag out. A `Number` is a numeric argument's rule, checked with either naming
(`Number.check`) and usable directly as an argparse `type=` (argparse names the flag).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import math
import os
import tempfile
import zipfile

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class HaloRefError(ValueError):
    """Raised for bad input to halo_ref: the message names the argument and the fix."""


class NonFiniteError(HaloRefError):
    """An array that must be finite holds NaN or inf (a training run reads it as divergence)."""


# -- naming an argument: the Python keyword, or the command line's flag -----------------------
_FLAG_NAMES = contextvars.ContextVar("halo_ref_flag_names", default=False)
_UNSET = object()


@contextlib.contextmanager
def flag_names():
    """Inside this block `arg` names arguments as command-line flags (the CLI's `main` uses it)."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


def arg(name: str, value=_UNSET, *, flag: str | None = None) -> str:
    """An argument as a message names it: `name` or `name=value!r` from Python, `--flag` or
    `--flag value` under `flag_names()`. `flag` is the flag when it differs from `name`
    (`evaluate_checkpoint(path)` is `--checkpoint`); otherwise it is `name` with dashes."""
    if _FLAG_NAMES.get():
        text = "--" + (flag or name).replace("_", "-")
        return text if value is _UNSET or value is True else f"{text} {value}"
    return name if value is _UNSET else f"{name}={value!r}"


class Number:
    """A numeric argument's rule: an int (integer=True) or a finite float, within bounds.

    `ge`/`gt`: lower bound (inclusive/exclusive), `lt`: exclusive upper bound. `check(value,
    name)` returns the value or raises HaloRefError naming `arg(name)`; calling the rule on a
    string parses and checks it, raising argparse.ArgumentTypeError (an argparse `type=`).
    """

    def __init__(self, *, integer=False, ge=None, gt=None, lt=None) -> None:
        self.integer, self.ge, self.gt, self.lt = integer, ge, gt, lt
        bounds = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                  f"< {lt}" if lt is not None else ""]  # fmt: skip
        kind = "an integer" if integer else "a finite number"
        self.rule = " ".join([kind, " and ".join(b for b in bounds if b)]).strip()

    def problem(self, value) -> str | None:
        """What is wrong with `value` (a phrase), or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return f"must be {self.rule}"
        if self.integer and not isinstance(value, (int, np.integer)):
            return f"must be {self.rule}"
        if not math.isfinite(value):
            return f"must be {self.rule}"
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        if not low_ok or (self.lt is not None and value >= self.lt):
            return f"must be {self.rule}"
        return None

    def check(self, value, name: str, *, flag: str | None = None):
        """`value` if it keeps the rule, else a HaloRefError naming the argument."""
        problem = self.problem(value)
        if problem is not None:
            raise HaloRefError(f"{arg(name, flag=flag)} {problem}, got {value!r}")
        return value

    def __call__(self, text: str):
        """argparse `type=`: the parsed value of `text`, or an ArgumentTypeError."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.rule}, got {text!r}") from None
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value


COUNT = Number(integer=True, ge=1)  # sizes and counts: epochs, batch size, threads
SEED = Number(integer=True, ge=0)  # NumPy's generators take seeds >= 0
POSITIVE = Number(gt=0)  # rates and ratios


def float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Return `dtype` as a NumPy float32/float64 dtype, or raise a one-line error."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise HaloRefError(
            f"{name}={dtype!r} is not a dtype; use np.float32 or np.float64"
        ) from exc
    if dt not in FLOAT_DTYPES:
        raise HaloRefError(f"{name}={dt} is not supported; use np.float32 or np.float64")
    return dt


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """Return `value` as an int >= minimum, or raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise HaloRefError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise HaloRefError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def some_names(names, limit: int = 3) -> str:
    """A list of names for a message, cut after `limit`: "['a', 'b', 'c', ...] (7 in all)"."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}, ...] ({len(names)} in all)" if len(names) > limit else f"[{shown}]"


def check_choice(value, name: str, choices) -> None:
    """Raise unless `value` is one of `choices`."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise HaloRefError(f"{name}={value!r} is not supported; choose one of {opts}")


def check_feature_map(
    x,
    name: str,
    *,
    channels: int | None,
    dtype: np.dtype,
    owner: str,
    ndim: int = 4,
    finite: bool = True,
) -> np.ndarray:
    """Check that `x` is a float array of `dtype`, (B, C, H, W) (ndim=4) or (B, features)
    (ndim=2), with `channels` entries on axis 1 (None: any), and with finite=True that every
    value is finite (a pass over the data: the models check their input, the layers inside do
    not).

    Returns `x` as an ndarray (no copy, no cast: a dtype mismatch is an error, never a silent cast).
    """
    layout = "(B, C, H, W)" if ndim == 4 else "(B, features)"
    if not isinstance(x, np.ndarray):
        raise HaloRefError(
            f"{owner}: {name} must be a NumPy array, got {type(x).__name__}; "
            f"convert it with np.asarray({name}, dtype=np.{dtype.name})"
        )
    if x.ndim != ndim:
        if x.ndim == ndim - 1:
            hint = f"; add a batch axis with {name}[None] for a single image"
        elif x.ndim > ndim and ndim == 4:
            hint = f"; merge the leading axes into the batch with {name}.reshape(-1, *{name}.shape[-3:])"
        else:
            hint = ""
        raise HaloRefError(f"{owner}: {name} must be {ndim}-D {layout}, got shape {x.shape}{hint}")
    if x.shape[0] == 0:  # refused before any backend runs, so both backends answer alike
        raise HaloRefError(
            f"{owner}: {name} holds no images (shape {x.shape}); pass a batch of at least one"
        )
    if x.dtype != dtype:
        if x.dtype.kind in "fc":
            fix = f"cast with {name}.astype(np.{dtype.name}) or build the layer with dtype=np.{x.dtype}"
        else:
            fix = f"cast with {name}.astype(np.{dtype.name})"
        raise HaloRefError(f"{owner}: {name} has dtype {x.dtype} but the layer is {dtype}; {fix}")
    if channels is not None and x.shape[1] != channels:
        raise HaloRefError(
            f"{owner}: {name} has {x.shape[1]} channels (axis 1 of shape {x.shape}) but the layer "
            f"expects {channels}; pass {layout} input or build the layer with {x.shape[1]} "
            "input channels"
        )
    if finite and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise NonFiniteError(
            f"{owner}: {name} contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
            "check the data or the previous layer"
        )
    return x


def check_spatial(H: int, W: int, *, block_size: int, stride: int, owner: str) -> None:
    """Raise unless H and W are multiples of the block size and of the stride."""
    for axis, n in (("H", H), ("W", W)):
        if n % block_size:
            lo, hi = n - n % block_size, n - n % block_size + block_size
            raise HaloRefError(
                f"{owner}: {axis}={n} is not a multiple of block_size={block_size}; "
                f"pad or crop the feature map to {hi if lo == 0 else f'{lo} or {hi}'}, "
                "or choose a block_size that divides it"
            )
        if n % stride:
            raise HaloRefError(
                f"{owner}: {axis}={n} is not a multiple of stride={stride}; pad or crop it to "
                f"{n + stride - n % stride}"
            )


def check_out_folder(path, name: str = "out", *, flag: str | None = None) -> str:
    """Raise a one-line HaloRefError unless `path` is a folder, or a path where one can be made,
    in which this process can write; creates nothing. Returns `path` as a string.

    Writing is tried, not inferred from permission bits (which say nothing for root, ACLs or a
    read-only mount): a temporary file is made and removed in the folder, or in its nearest
    existing parent when the folder is still to be made.
    """
    path = os.fspath(path)
    named = arg(name, path, flag=flag)
    if os.path.exists(path) and not os.path.isdir(path):
        raise HaloRefError(f"{named} is a file, not a folder; choose a folder path")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise HaloRefError(
            f"{named}: {parent} is a file, so no folder can be made under it; choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise HaloRefError(
            f"{named}: cannot write in {parent} ({exc.strerror or exc}); choose a folder you can "
            "write to"
        ) from None
    return path


def make_folder(path, name: str = "out", *, flag: str | None = None) -> None:
    """`os.makedirs(path, exist_ok=True)`, failing as a one-line HaloRefError."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise HaloRefError(
            f"{arg(name, os.fspath(path), flag=flag)}: cannot make the folder "
            f"({exc.strerror or exc}); choose another path"
        ) from None


def read_npz(path: str, *, missing: str, not_npz: str, unreadable: str) -> dict[str, np.ndarray]:
    """Every array of the .npz file at `path`, read with allow_pickle=False.

    Each way the file can be unusable is a one-line HaloRefError with the caller's wording:
    `missing` (no file), `not_npz` (not a zip archive at all), `unreadable` (truncated, corrupt,
    or holding pickled objects), in which `{error}` becomes the first line of the cause.
    """
    if not os.path.isfile(path):
        raise HaloRefError(missing)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise HaloRefError(not_npz)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise HaloRefError(unreadable.replace("{error}", first)) from None
