"""A minimal module system: parameters, gradients and state dicts, nothing else.

A `Module` owns named parameter arrays and, after `backward`, gradient arrays under the same
names. Children are other modules whose names become dotted prefixes, as in PyTorch, so a state
dict from PyTorch maps onto halo_ref key for key. There is no autograd tape: each module's
`backward` is written by hand and undoes its own `forward` using what `forward` cached.

Buffers are state that is not trained (BatchNorm's running statistics): they are in
`state_dict` (so PyTorch state dicts load key for key) but not in `params`, so an optimiser that
walks `params` and `grads` never touches them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._checks import HaloRefError, some_names


class Module:
    """Base class: owns parameters and children; subclasses define forward/backward."""

    def __init__(self) -> None:
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._children: dict[str, Module] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self.training = True

    # -- structure ---------------------------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register `value` as the parameter `name` (a dotted name is allowed)."""
        self._params[name] = value
        return value

    def add_buffer(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register `value` as the buffer `name`: saved in state_dict, never trained."""
        self._buffers[name] = value
        return value

    def add_child(self, name: str, module: Module) -> Module:
        """Register `module` as a child; its parameters appear as `name.<param>`."""
        self._children[name] = module
        return module

    def _named(self, attr: str):
        yield from getattr(self, attr).items()
        for cname, child in self._children.items():
            for name, arr in child._named(attr):
                yield f"{cname}.{name}", arr

    @property
    def params(self) -> dict[str, np.ndarray]:
        """All parameters, keyed by dotted name (the arrays themselves, not copies)."""
        return dict(self._named("_params"))

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """All buffers (running statistics), keyed by dotted name (the arrays themselves)."""
        return dict(self._named("_buffers"))

    def children(self) -> dict[str, Module]:
        """The direct children, by name."""
        return dict(self._children)

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients from the last `backward`, keyed like `params`."""
        return dict(self._named("_grads"))

    def zero_grad(self) -> None:
        """Forget the gradients of the last backward."""
        self._grads.clear()
        for child in self._children.values():
            child.zero_grad()

    def train(self, mode: bool = True) -> Module:
        """Switch to training (or, with mode=False, evaluation) behaviour, recursively."""
        self.training = mode
        for child in self._children.values():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Switch to evaluation behaviour, recursively."""
        return self.train(False)

    # -- calling -----------------------------------------------------------------------------
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers, keyed by dotted name."""
        return {k: v.copy() for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: Mapping) -> None:
        """Copy `state` into the parameters, strictly.

        Values may be anything `np.asarray` converts (NumPy arrays, lists, CPU torch tensors).
        Every key (parameters and buffers) must be present with the right shape and finite
        values, and no extra key is allowed; on any error nothing is modified. Values are cast
        to each parameter's or buffer's dtype.
        """
        own = {**self.params, **self.buffers}
        name = type(self).__name__
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:  # counts and the first few: a paper model has hundreds of keys
            found = [
                f"{kind} key(s) {some_names(keys)}"
                for kind, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            ]
            raise HaloRefError(
                f"{name}.load_state_dict: {'; '.join(found)}; the module has {len(own)} keys and "
                f"the state {len(state)}: is it the state of another model or configuration?"
            )
        staged = {}
        for key, target in own.items():
            value = state[key]
            if hasattr(value, "detach"):  # a torch tensor that may require grad
                value = value.detach().cpu()
            try:
                arr = np.asarray(value)
            except Exception as exc:
                raise HaloRefError(
                    f"{name}.load_state_dict: {key!r} cannot be converted to an array ({exc})"
                ) from exc
            if arr.shape != target.shape:
                raise HaloRefError(
                    f"{name}.load_state_dict: {key!r} has shape {arr.shape}, expected {target.shape}"
                )
            if arr.dtype.kind not in "fiu":
                raise HaloRefError(
                    f"{name}.load_state_dict: {key!r} has dtype {arr.dtype}; expected numbers"
                )
            if not np.isfinite(arr).all():
                raise HaloRefError(
                    f"{name}.load_state_dict: {key!r} contains NaN or inf; "
                    "the weights are corrupt or diverged"
                )
            staged[key] = arr
        for key, arr in staged.items():
            own[key][...] = arr  # in place: optimisers keep references to these arrays
