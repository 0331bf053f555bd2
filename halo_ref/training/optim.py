"""Optimisers and learning-rate schedules, written out in NumPy.

- `SGD`: stochastic gradient descent with (heavy-ball or Nesterov) momentum and L2 weight decay
  added to the gradient, as in PyTorch's `torch.optim.SGD`.
- `AdamW`: Adam with decoupled weight decay (Loshchilov & Hutter 2019), as in `torch.optim.AdamW`.
- `cosine_lr`: linear warm-up, then a half cosine from the base rate down to `min_lr`.
- `clip_grad_norm`: rescale all gradients together when their global L2 norm is too large.

Parameters are updated in place, because modules and optimiser state hold references to the
same arrays. Weight decay skips 1-D parameters (biases, normalisation scales): shrinking those
towards zero is not regularisation, it just biases the layer.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import HaloRefError


def decays(name: str, param: np.ndarray) -> bool:
    """Whether weight decay applies to this parameter: everything except 1-D arrays."""
    return param.ndim > 1


class Optimizer:
    """Shared bookkeeping: the parameter dict, per-parameter state arrays, and (de)serialising."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params: dict[str, np.ndarray], weight_decay: float) -> None:
        if weight_decay < 0:
            raise HaloRefError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = params
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.state = {s: {k: np.zeros_like(p) for k, p in params.items()} for s in self.state_names}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat dict of arrays: "<state>/<param>" for each state buffer, plus "step_count"."""
        out = {f"{s}/{k}": v.copy() for s, bufs in self.state.items() for k, v in bufs.items()}
        out["step_count"] = np.array(self.step_count, dtype=np.int64)
        return out

    def load_state_dict(self, state) -> None:
        """Restore from `state_dict()` output; every buffer must be present with its shape."""
        expected = set(self.state_dict())
        got = set(state)
        if got != expected:
            missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
            raise HaloRefError(
                f"{type(self).__name__} state does not match the model: missing {missing}, "
                f"unexpected {extra}; was the checkpoint made with another --model or optimiser?"
            )
        for s, bufs in self.state.items():
            for k, v in bufs.items():
                arr = np.asarray(state[f"{s}/{k}"])
                if arr.shape != v.shape:
                    raise HaloRefError(
                        f"optimiser state {s}/{k} has shape {arr.shape}, expected {v.shape}"
                    )
                v[...] = arr
        self.step_count = int(state["step_count"])


class SGD(Optimizer):
    """SGD with momentum: v = mu v + (g + wd p); p -= lr v (Nesterov: p -= lr (g + wd p + mu v))."""

    state_names = ("momentum",)

    def __init__(self, params, *, momentum=0.9, nesterov=False, weight_decay=0.0) -> None:
        if not 0 <= momentum < 1:
            raise HaloRefError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise HaloRefError("nesterov=True needs momentum > 0")
        super().__init__(params, weight_decay)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def step(self, grads, lr):
        """Update every parameter in place from its gradient `grads[name]` at learning rate lr."""
        mu = self.momentum
        for name, p in self.params.items():
            g = grads[name]
            if self.weight_decay and decays(name, p):
                g = g + self.weight_decay * p
            v = self.state["momentum"][name]
            v *= mu
            v += g
            p -= lr * (g + mu * v) if self.nesterov else lr * v
        self.step_count += 1


class AdamW(Optimizer):
    """Adam with bias correction, and weight decay applied to the weights directly:

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p).
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05) -> None:
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise HaloRefError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, weight_decay)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def step(self, grads, lr):
        """Update every parameter in place from its gradient `grads[name]` at learning rate lr."""
        t = self.step_count + 1
        c1, c2 = 1 - self.b1**t, 1 - self.b2**t
        for name, p in self.params.items():
            g = grads[name]
            m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            if self.weight_decay and decays(name, p):
                p -= lr * self.weight_decay * p  # decoupled: uses p before this step's update
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)
        self.step_count = t


def make_optimizer(name: str, params, *, weight_decay: float, momentum: float = 0.9) -> Optimizer:
    """Build "sgd", "nesterov" (SGD with Nesterov momentum) or "adamw" over `params`."""
    if name == "sgd":
        return SGD(params, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return SGD(params, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, weight_decay=weight_decay)
    raise HaloRefError(f"--optimizer {name!r} is not known; choose sgd, nesterov or adamw")


def cosine_lr(
    step: int, *, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0
) -> float:
    """Learning rate at `step` (0-based): linear warm-up to base_lr, then cosine to min_lr.

    During warm-up the rate is base_lr * (step + 1) / warmup_steps, so the first step is not 0.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """L2 norm of all gradients taken together, accumulated in float64."""
    return math.sqrt(sum(float(np.vdot(g, g).real) for g in grads.values()))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place by min(1, max_norm / norm); return the norm before clipping.

    max_norm <= 0 disables clipping. A non-finite norm is returned unchanged for the caller to
    report (scaling NaNs would only hide where they came from).
    """
    norm = global_norm(grads)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm
