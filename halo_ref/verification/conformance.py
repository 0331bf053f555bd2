"""The conformance table: every known implementation of halo attention, property by property.

Rows are implementations (with their versions); columns are properties on which implementations
are known to differ or to break. A property's vector is a small base configuration with that
property switched on and every other free choice at the implementation's *own* semantics
(`halo_ref.verification.semantics`: lucidrains always masks the border and scales the position
logits, so its "odd block" vector masks and scales too). The truth for every vector comes from
halo_ref's NumPy reference (`halo_ref.verification.vectors.make_vector`), exactly as for the
golden vectors. A cell is

- `pass`: every compared array within tolerance (the terminal output adds the worst error; the
  docs page leaves it out, so that it does not change with the last bits of a parallel sum);
- `FAIL 3.2e-01`: the worst error, past the tolerance (`ERROR` when the implementation raised);
- `n.a.`: the implementation cannot express the property (the reason is listed under the
  table) or, for gradient columns, gives no gradients.

Property columns compare the output in float32 against the float32 tolerance (1e-4);
gradient columns compare dx and each weight gradient over all of the row's applicable float32
vectors; the float64 column compares every array of every applicable vector in float64
(tolerance 1e-10). `halo-ref conformance` prints it; docs/conformance.md is its `--markdown`
output, which CI regenerates and compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import __version__
from .._checks import HaloRefError
from .adapters import resolve_adapter
from .semantics import Semantics, package_version
from .vectors import GRAD_PREFIX, Vector, VectorConfig, make_vector
from .verify import ERROR, FAIL, NOT_APPLICABLE, Adapter, check_vector


@dataclass(frozen=True)
class Property:
    """A column: `overrides` of the base configuration that switch the property on."""

    key: str
    title: str
    overrides: dict


BASE = dict(
    dim=8,
    dim_out=8,
    num_heads=2,
    dim_head=4,
    block_size=4,
    halo_size=1,
    batch=2,
    height=8,
    width=8,
)
PROPERTIES = (
    Property("zeros", "zero-padded border", dict(border="zeros")),
    Property("mask", "masked border", dict(border="mask")),
    Property("spe", "scale_pos_embed", dict(scale_pos_embed=True)),
    Property("no_spe", "unscaled position logits", dict(scale_pos_embed=False)),
    Property("stride_q", "stride 2, strided queries", dict(stride=2, width=12)),
    Property(
        "stride_pool",
        "stride 2, pooled (odd block)",
        dict(stride=2, block_size=3, height=6, width=12),
    ),
    Property("odd_block", "odd block", dict(block_size=3, height=6, width=9)),
    Property("wide_halo", "halo wider than block", dict(block_size=2, halo_size=3, height=4)),
    Property("no_halo", "no halo", dict(halo_size=0)),
    Property("dv", "d_v != d_qk", dict(dim_head=2)),
    Property("bias", "q/kv biases", dict(qkv_bias=True)),
    Property(
        "pad", "map not a multiple of the block", dict(height=6, width=10, pad_to_blocks=True)
    ),
)
GRADIENTS = (
    ("dx", "dx"),
    (GRAD_PREFIX + "q.weight", "grad q"),
    (GRAD_PREFIX + "kv.weight", "grad kv"),
    (GRAD_PREFIX + "pos_embed.height_rel", "grad height_rel"),
    (GRAD_PREFIX + "pos_embed.width_rel", "grad width_rel"),
)
FLOAT64 = "float64"
NA = "n.a."


def property_config(prop: Property, semantics: Semantics) -> VectorConfig:
    """The vector configuration of `prop` for an implementation with `semantics`."""
    native = dict(border=semantics.borders[0], scale_pos_embed=semantics.scale_pos_embed[0])
    kw = {**BASE, **native, **prop.overrides}
    tag = f"{kw['border']}{'-spe' if kw['scale_pos_embed'] else ''}"
    return VectorConfig(name=f"conformance-{prop.key}-{tag}", purpose=prop.title, **kw)


class _VectorCache:
    """Each configuration's vectors, made once and shared by every row that needs them."""

    def __init__(self, seed: int):
        self.seed, self._made = seed, {}

    def __call__(self, config: VectorConfig) -> dict[str, Vector]:
        if config.name not in self._made:
            arrays = make_vector(config, seed=self.seed)
            self._made[config.name] = {
                dtype: Vector(config.name, dtype, config.to_json(), a, config.purpose)
                for dtype, a in arrays.items()
            }
        return self._made[config.name]


@dataclass
class Cell:
    """One table cell: status ("pass", "FAIL", "ERROR", "n.a.") and the worst error."""

    status: str
    error: float = 0.0
    note: str = ""

    def text(self, digits: bool = True) -> str:
        """ "pass 3.1e-07" (with digits=False just "pass"), "FAIL 3.2e-01", "ERROR", "n.a."."""
        if self.status == "pass":
            return f"pass {self.error:.1e}" if digits else "pass"
        if self.status == FAIL:
            return f"FAIL {self.error:.1e}"
        return self.status


@dataclass
class Row:
    """One implementation's cells, by column title, and the reasons for its n.a. cells."""

    name: str
    cells: dict[str, Cell] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [k for k, c in self.cells.items() if c.status in (FAIL, ERROR)]


def _worst(cells: list[Cell]) -> Cell:
    """Combine cells of one column: any failure wins, else the largest error passes."""
    if not cells:
        return Cell(NA)
    bad = [c for c in cells if c.status in (FAIL, ERROR)]
    if bad:
        errors = [c for c in bad if c.status == FAIL]
        return max(errors, key=lambda c: c.error) if errors else bad[0]
    return Cell("pass", max(c.error for c in cells))


def _cell(result, keys: Iterable[str]) -> Cell | None:
    """The cell of the arrays `keys` of one vector result (None if none were compared)."""
    if result.status == ERROR:
        return Cell(ERROR, note=result.note)
    keys = set(keys)
    comps = [c for c in result.comparisons if c.name in keys]
    if not comps:
        return None
    worst = max(comps, key=lambda c: c.error)
    return Cell("pass" if all(c.passed for c in comps) else FAIL, worst.error)


def conformance_row(adapter: Adapter, vectors: _VectorCache) -> Row:
    """Run every property of the table through one implementation (its `semantics` set)."""
    semantics = adapter.semantics
    if semantics is None:
        raise HaloRefError(f"adapter {adapter.name!r} declares no semantics")
    row = Row(adapter.name)
    grads: dict[str, list[Cell]] = {key: [] for key, _ in GRADIENTS}
    f64: list[Cell] = []
    for prop in PROPERTIES:
        config = property_config(prop, semantics)
        reason = semantics.reason(config.to_json())
        if reason:
            row.cells[prop.title], row.reasons[prop.title] = Cell(NA), reason
            continue
        made = vectors(config)
        r32 = check_vector(adapter, made["float32"])
        if r32.status == NOT_APPLICABLE:  # a rule the adapter does not declare (pad-then-crop)
            row.cells[prop.title], row.reasons[prop.title] = Cell(NA), r32.note
            continue
        row.cells[prop.title] = _cell(r32, ["out"])
        for key, _ in GRADIENTS:
            cell = _cell(r32, [key])
            if cell is not None:
                grads[key].append(cell)
        r64 = check_vector(adapter, made["float64"])
        f64.append(_cell(r64, [c.name for c in r64.comparisons] or ["out"]) or Cell(NA))
    for key, title in GRADIENTS:
        row.cells[title] = _worst(grads[key])
        if not grads[key]:
            row.reasons[title] = semantics.gradients_note or "no gradients"
    row.cells[FLOAT64] = _worst([c for c in f64 if c.status != NA])
    return row


def columns() -> list[str]:
    return [p.title for p in PROPERTIES] + [t for _, t in GRADIENTS] + [FLOAT64]


# Implementations, in table order: command-line name -> (`resolve_adapter` name, row label or
# None for the adapter's own name, which carries its package's version)
IMPLEMENTATIONS = {
    "halo_ref": ("halo_ref:numba", lambda: f"halo_ref {__version__}, numba backend"),
    "timm": ("timm", lambda: f"timm HaloAttn (timm {package_version('timm')})"),
    "lucidrains": ("lucidrains", None),
    "kecam": ("kecam", None),
    "flex": ("flex", None),
    "flex:backward": ("flex:backward", None),
    "torch": ("torch", lambda: "halo_ref's PyTorch example (docs)"),
}


def build_adapters(names: Iterable[str]) -> list[Adapter]:
    """The adapters of `names` (keys of `IMPLEMENTATIONS`), with a one-line error for others;
    each checked for its packages before any vector runs."""
    names = list(names)
    for name in names:
        if name not in IMPLEMENTATIONS:
            raise HaloRefError(
                f"--only {name!r} is not an implementation; choose from {', '.join(IMPLEMENTATIONS)}"
            )
    adapters = []
    for name in names:
        spec, label = IMPLEMENTATIONS[name]
        adapter = resolve_adapter(spec)
        adapters.append(dataclasses.replace(adapter, name=label()) if label else adapter)
    return adapters


def conformance_table(adapters: Iterable[Adapter], *, seed: int = 0) -> list[Row]:
    """A row per adapter (each must carry `.semantics`), vectors shared between rows."""
    vectors = _VectorCache(seed)
    return [conformance_row(adapter, vectors) for adapter in adapters]


def render_markdown(rows: list[Row]) -> str:
    """The table as Markdown, implementations as rows, then the n.a. reasons."""
    cols = columns()
    lines = ["| implementation | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = [row.cells[c].text(digits=False) for c in cols]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    lines += ["", "Not applicable:", ""]
    for row in rows:
        if row.reasons:
            by_reason: dict[str, list[str]] = {}
            for col, reason in row.reasons.items():
                by_reason.setdefault(reason, []).append(col)
            text = "; ".join(f"{', '.join(cs)}: {r}" for r, cs in by_reason.items())
            lines.append(f"- {row.name}: {text}")
    errors = [
        (row.name, c, cell.note) for row in rows for c, cell in row.cells.items() if cell.note
    ]
    if errors:
        lines += ["", "Raised:", ""]
        lines += [f"- {name}, {col}: {note}" for name, col, note in errors]
    return "\n".join(lines) + "\n"


def render_text(rows: list[Row]) -> str:
    """One block per implementation (the table is too wide for a terminal)."""
    out = []
    for row in rows:
        out.append(row.name)
        for col, cell in row.cells.items():
            reason = f"  ({row.reasons[col]})" if col in row.reasons else ""
            out.append(f"  {col:<32} {cell.text()}{reason}")
        out.append("")
    failing = [row.name for row in rows if row.failed]
    out.append("FAILED: " + ", ".join(failing) if failing else "every applicable cell passes")
    return "\n".join(out) + "\n"


PAGE_HEAD = """# Conformance across implementations

<!-- generated by `halo-ref conformance --markdown`; CI checks that it matches -->

Every implementation of halo attention we know, run on the same small configurations, with
halo_ref's NumPy reference as the truth (how the truth is checked: [verification](verification.md)).
A column switches one property on; everything else stays at the implementation's own choices
(lucidrains' row masks the border and scales the position logits in every column). Property
columns compare the output in float32 (tolerance 1e-4); gradient columns compare dx and each
weight gradient over all of the row's applicable float32 vectors; the float64 column compares
every array of every applicable vector in float64 (tolerance 1e-10). A failing cell shows the
worst error (max |actual - expected| / max |expected|); `halo-ref conformance` without
`--markdown` prints the worst error of passing cells too. Regenerate with
`halo-ref conformance --markdown > docs/conformance.md`.

"""


def render_page(rows: list[Row]) -> str:
    return PAGE_HEAD + render_markdown(rows)
