"""What every image classifier here shares around its layers: the checks of its input and of
the gradient it is given, and the backend it runs on (`HaloNet` and timm's HaloNets,
`TimmHaloNet`, are both subclasses of `ImageClassifier`)."""

from __future__ import annotations

import numpy as np

from .. import backend as backends
from .._checks import HaloRefError, check_feature_map
from ..nn.layers import Sequential


class ImageClassifier(Sequential):
    """Children applied in order, from images to logits.

    forward: x (B, in_chans, H, W) -> logits (B, num_classes), H and W multiples of
    `input_multiple` (at least one multiple); backward: dlogits (B, num_classes) -> dx.
    backend: None (follow `halo_ref.backend.current()`) or the backend of the whole network.
    A subclass builds its children, then calls `_set_io`.
    """

    def _set_io(self, *, name, num_classes, in_chans, dtype, input_multiple, backend, hint="",
                fixed_size=None):  # fmt: skip
        """name: how errors name the model; hint: what the input-size error adds; fixed_size:
        the one image side the model takes (a layer built for one map size), or None."""
        self.model_name, self.num_classes, self.in_chans = name, num_classes, in_chans
        self.dtype, self.input_multiple, self.fixed_size = dtype, input_multiple, fixed_size
        self.backend = None if backend is None else backends.resolve(backend)
        self._size_hint = hint

    def forward(self, x):
        """x: (B, in_chans, H, W) -> logits (B, num_classes)."""
        owner = f"halonet({self.model_name!r}).forward"
        x = check_feature_map(x, "x", channels=self.in_chans, dtype=self.dtype, owner=owner)
        H, W = x.shape[2:]
        s = self.fixed_size
        if s is not None and (H, W) != (s, s):
            raise HaloRefError(
                f"{owner}: image size {H}x{W}, but the model was built for {s}x{s} images "
                f"(its bottleneck attention is built for one map size); resize to {s}x{s} or "
                "build it with img_size=..."
            )
        m = self.input_multiple
        if H % m or W % m or min(H, W) < m:
            raise HaloRefError(
                f"{owner}: image size {H}x{W} cannot be cut into the model's attention blocks; "
                f"H and W must be multiples of {m}{self._size_hint} (e.g. resize or pad to "
                f"{max(m, -(-H // m) * m)}x{max(m, -(-W // m) * m)})"
            )
        with backends.use(self.backend):
            return super().forward(x)

    def backward(self, dlogits):
        """dlogits: (B, num_classes) -> dx (B, in_chans, H, W); fills `grads`."""
        if not isinstance(dlogits, np.ndarray) or dlogits.shape[-1:] != (self.num_classes,):
            got = getattr(dlogits, "shape", type(dlogits).__name__)
            raise HaloRefError(
                f"halonet({self.model_name!r}).backward: dlogits must have shape "
                f"(B, {self.num_classes}), got {got}"
            )
        with backends.use(self.backend):
            return super().backward(dlogits.astype(self.dtype, copy=False))
