"""Halo attention, the data path: image -> blocks -> halos -> logits -> softmax -> values -> image.

The modules, in reading order:

- `blocking`: cutting a map into query blocks, gathering each block's halo window, and the
  adjoint scatter;
- `relpos`: the factorised relative position logits, forward and backward;
- `core`: halo attention in NumPy, `halo_attention_forward` / `_backward`, and the layer's
  projections around it, `halo_layer_forward` / `_backward` (the page to read; no dispatch);
- `kernels`: the same contracts as fused Numba kernels (tested against `core`);
- `dense`: the oracle, halo attention as masked global attention, and a per-pixel loop;
- `layer`: `HaloAttention`, the layer with timm's arguments and weights.

`halo_ref.backend` chooses between `core` and `kernels`. Import names from their module (the
package's public names are also at the top: `from halo_ref import HaloAttention`).
"""
