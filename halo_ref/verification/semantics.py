"""What an implementation of halo attention can express: `Semantics`, and those of the
implementations halo_ref knows.

Implementations differ in what they *define*, not only in whether they are right: lucidrains'
`halonet-pytorch` masks the border and always scales the position logits; kecam zero-pads and
never does; neither has query/key biases; timm has no masked border. Each adapter
(`halo_ref.verification.adapters`, `halo_ref.verification.torch_side`) therefore carries a
`Semantics`. A vector outside them is "not applicable", with the reason, never a failure; a
vector inside them must pass at the manifest's tolerances. The conformance table builds each
row's vectors at the implementation's own semantics.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass


@dataclass(frozen=True)
class Semantics:
    """The configurations an implementation can express (each field: the values it has).

    borders: "zeros" (padded keys take part in the softmax) and/or "mask", its own first;
    scale_pos_embed: False (scale * q.k + pos) and/or True (scale * (q.k + pos)), its own first;
    query_stride: stride 2 by subsampled queries; pooling: stride 2 by full-resolution attention
    and a 2x2 average pool (for odd blocks; avg_down: also on request for even blocks);
    qkv_bias: biases on the projections; separate_dv: d_v != d_qk; dim_out: dim_out != dim;
    no_halo: halo_size = 0; gradients: whether the adapter returns dx and weight gradients
    (gradients_note: why not, or how).
    """

    borders: tuple[str, ...] = ("zeros", "mask")
    scale_pos_embed: tuple[bool, ...] = (False, True)
    query_stride: bool = True
    pooling: bool = True
    avg_down: bool = True
    qkv_bias: bool = True
    separate_dv: bool = True
    dim_out: bool = True
    no_halo: bool = True
    gradients: bool = True
    gradients_note: str = ""

    def reason(self, config: dict) -> str | None:
        """None when a vector's configuration (`VectorConfig.to_json()`) is expressible, else
        the first property that is not, as a short phrase."""
        d = config["derived"]
        if config["border"] not in self.borders:
            return f"has only border={self.borders[0]!r}"
        if bool(config["scale_pos_embed"]) not in self.scale_pos_embed:
            return f"has only scale_pos_embed={self.scale_pos_embed[0]}"
        if config["stride"] != 1 and d["query_stride"] != 1 and not self.query_stride:
            return "has no stride 2 by subsampled queries"
        if config["stride"] != 1 and d["avg_pool_after"] and not self.pooling:
            return "has no stride 2 by pooling"
        if config["avg_down"] and config["block_size"] % 2 == 0 and not self.avg_down:
            return "has no avg_down (it pools only for odd blocks)"
        if config["qkv_bias"] and not self.qkv_bias:
            return "has no q/kv biases"
        if config["dim_head"] != d["dim_head_v"] and not self.separate_dv:
            return "has d_v = d_qk only"
        if config["dim_out"] != config["dim"] and not self.dim_out:
            return "has dim_out = dim only"
        if config["halo_size"] == 0 and not self.no_halo:
            return "needs halo_size > 0"
        return None


EVERYTHING = Semantics()  # halo_ref, and halo_ref's PyTorch example
TIMM = Semantics(borders=("zeros",))
LUCIDRAINS = Semantics(
    borders=("mask",),
    scale_pos_embed=(True,),
    query_stride=False,
    pooling=False,
    avg_down=False,
    qkv_bias=False,
    separate_dv=False,
    no_halo=False,
)
KECAM = Semantics(borders=("zeros",), scale_pos_embed=(False,), avg_down=False, qkv_bias=False)
FLEX = Semantics(
    gradients=False,
    gradients_note="FlexAttention refuses backward on CPU (torch 2.13): forward only",
)
FLEX_EAGER_BACKWARD = Semantics(
    gradients_note="backward through FlexAttention's eager reference, past its CPU guard",
)


def package_version(package: str) -> str:
    """The installed version of a distribution, "?" when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"
