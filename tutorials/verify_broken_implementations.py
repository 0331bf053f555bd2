# %% [markdown]
# # Catching four classic halo-attention bugs with the golden vectors
#
# Halo attention (Vaswani et al. 2021, section 3.1) is easy to get *almost* right. Ports in the
# wild disagree on padding, masking and scaling, and a wrong detail rarely crashes: it trains,
# a little worse. This script takes a correct PyTorch implementation,
# `halo_ref.verification.torch_side.torch_halo_attention`, plants four bugs seen in real ports,
# one at a time, and runs each through `halo_ref.verification.verify.verify` against the golden
# vectors (`halo_ref.verification.vectors`): 28 small layer configurations (14 with timm's zero
# padding, the same 14 with a padding mask), each with an input, weights, output and every
# gradient.
#
# For every bug, read three things in the report:
#
# 1. **which configurations fail** (the table), and the **diagnosis**, which names the one
#    configuration property that the failures share;
# 2. **which arrays fail** (out, dx, or a single weight's gradient) and the worst entries;
# 3. when every configuration fails, an **ablation**: vectors recomputed with one ingredient
#    switched off tell whether the bug lives in that ingredient.
#
# Run it as a plain script (`python tutorials/verify_broken_implementations.py`); it needs
# PyTorch and takes a few seconds.

# %%
import numpy as np

from halo_ref.verification.torch_side import PLANTED_BUGS, torch_adapter
from halo_ref.verification.vectors import CONFIG_GRID, Vector, generate_vectors, reference_result
from halo_ref.verification.verify import verify

# float64 copies only: a bug shows up the same way in float32, this keeps the output short
vectors = generate_vectors(dtypes=("float64",), models=())
print(f"{len(vectors)} vectors, for example {vectors[0].name}: {vectors[0].purpose}")


def show(report, max_rows=8):
    """The failing rows of the table, the diagnosis and the summary line."""
    lines = report.table().splitlines()
    failing = [line for line in lines[2:] if " FAIL " in line or " ERROR " in line]
    print("\n".join(lines[:2] + failing[:max_rows]))
    if len(failing) > max_rows:
        print(f"... {len(failing) - max_rows} more failing rows")
    print("diagnosis:", report.diagnosis())
    print(report.summary())


# %% [markdown]
# ## The correct implementation passes everything
#
# Errors are max |actual - expected| / max |expected| per array. In float64 a correct
# implementation differs from the vectors by rounding only (around 1e-15); the tolerance is 1e-10.

# %%
report = verify(torch_adapter(), vectors)
print(report.summary())
print("diagnosis:", report.diagnosis())
worst = max(c.error for r in report.results for c in r.comparisons)
print(f"largest error over every array of every vector: {worst:.1e}")

# %% [markdown]
# ## Bug 1: an inverted padding mask
#
# With `border="mask"`, keys outside the image must be excluded from the softmax. The slip is
# to build the boolean the other way round:
#
# ```python
# logits = logits.masked_fill(inside, float("-inf"))      # BUG: should be ~inside
# ```
#
# Every query then attends only to padding. Those keys are zero vectors, so the output is zero,
# and where a window has no padding at all (halo 0, or the interior of 1x1 blocks) every logit
# is -inf and the softmax returns NaN.

# %%
print(PLANTED_BUGS["inverted_mask"])
report = verify(torch_adapter("inverted_mask"), vectors)
show(report)

# %% [markdown]
# The diagnosis says *exactly the configurations with border='mask'*: the zero-padding half of
# the grid passes, so attention itself is right and the masking path is wrong. The details
# show the output being exactly 0 where halo_ref has values of order 1:

# %%
first = report.failed[0]
print(first.name, [c for c in first.comparisons if c.name == "out"][0].report())

# %% [markdown]
# ## Bug 2: the relative index off by one
#
# The relative position table has 2*win - 1 rows, and the row for a key at offset
# (key - query) is `offset + win - 1`. Forgetting the `- 1` (and clamping to stay in range)
# shifts every position logit by one row:
#
# ```python
# idx = key - query + win          # BUG: should be + win - 1
# ```

# %%
print(PLANTED_BUGS["relpos_off_by_one"])
report = verify(torch_adapter("relpos_off_by_one"), vectors)
show(report, max_rows=4)

# %% [markdown]
# Every configuration fails, so the table alone cannot say where. An ablation can: recompute
# the vectors with both position tables set to zero (halo_ref's answer for those weights), and
# verify again. If the bug is in the position term, everything that depends on the tables'
# *values* now agrees, and only the gradients of the tables (which depend on which row each
# pair reads) still fail.


# %%
def without_position_tables(vector):
    """The same vector with zero position tables and halo_ref's answers recomputed."""
    config = next(c for c in CONFIG_GRID if c.name == vector.name)
    weights = {
        k: np.zeros_like(v) if k.startswith("pos_embed.") else v for k, v in vector.weights.items()
    }
    result = reference_result(config, vector.x, weights, vector.dout)
    arrays = {"x": vector.x, **weights, "dout": vector.dout, **result}
    return Vector(vector.name, vector.dtype, vector.config, arrays, vector.purpose)


ablated = [without_position_tables(v) for v in vectors]
report = verify(torch_adapter("relpos_off_by_one"), ablated)
failing_arrays = sorted({c.name for r in report.failed for c in r.comparisons if not c.passed})
print("arrays that still fail with zero position tables:", failing_arrays)
print("the correct implementation on the same vectors:", verify(torch_adapter(), ablated).summary())

# %% [markdown]
# Only `grad/pos_embed.height_rel` and `grad/pos_embed.width_rel` fail: out, dx and the
# projections are right once the tables carry no values, so the error is in *which table row*
# each (query, key) pair reads: the relative index.
#
# ## Bug 3: the scale applied twice to the position logits
#
# With `scale_pos_embed=True`, timm computes `(q.k + pos) * scale`. Scaling the position logits
# inside the bracket as well gives `(q.k + pos * scale) * scale`:
#
# ```python
# logits = (content + pos * scale) * scale       # BUG: pos is already inside the bracket
# ```

# %%
print(PLANTED_BUGS["double_scale"])
report = verify(torch_adapter("double_scale"), vectors)
show(report)

# %% [markdown]
# The failures are *exactly the configurations with scale_pos_embed=True*, in both borders:
# the bug is on that flag's code path, and the default path is right.
#
# ## Bug 4: k and v de-interleaved wrongly
#
# timm's `kv` projection holds, for each head in turn, a block of `d_qk` key channels and then a
# block of `d_v` value channels: `[k_0 | v_0 | k_1 | v_1 | ...]` (see the *Shapes* page). A port
# that splits the channels as `[all k | all v]` uses the right weights in the wrong places:
#
# ```python
# # BUG: this takes the first heads*d_qk channels as keys, but they mix keys and values.
# k, v = kv[:, : heads * d_qk], kv[:, heads * d_qk :]
# # Correct: view the channels as (heads, d_qk + d_v), then split each head's block.
# kv = kv.reshape(B, heads, d_qk + d_v, H, W)
# k, v = kv[:, :, :d_qk], kv[:, :, d_qk:]
# ```

# %%
print(PLANTED_BUGS["kv_split"])
report = verify(torch_adapter("kv_split"), vectors)
show(report, max_rows=4)

# %% [markdown]
# With one head the two layouts coincide, so the one-head configurations pass and the
# diagnosis reads *exactly the configurations with num_heads > 1*: look at how the kv channels
# are assigned to heads. The passing rows confirm it:

# %%
passing = [(r.name, r.config["num_heads"]) for r in report.results if r.status == "pass"]
print("passing configurations (name, num_heads):", passing)

# %% [markdown]
# ## Your own implementation
#
# Write an adapter, a function `run(config, x, weights, dout) -> (out, dx, grads)`, and call
# `verify(run)`, or put it in a module and run `halo-ref verify --against module:run`. The
# template, with a complete PyTorch example and a JAX sketch, is in docs/verification.md.
