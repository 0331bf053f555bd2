"""The conformance table: the committed page matches the command, and a planted bug shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import lucidrains_with_bool_mask

from halo_ref.cli.main import main
from halo_ref.verification.conformance import (
    IMPLEMENTATIONS,
    NA,
    PROPERTIES,
    Cell,
    Row,
    columns,
    conformance_table,
    render_markdown,
)
from halo_ref.verification.verify import Adapter

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "conformance.md"


def test_cells_and_markdown_without_torch():
    row = Row("impl", {c: Cell("pass", 3e-7) for c in columns()})
    row.cells["masked border"] = Cell(NA)
    row.reasons["masked border"] = "has only border='zeros'"
    row.cells["odd block"] = Cell("FAIL", 0.31)
    text = render_markdown([row])
    assert "| impl | pass | n.a. | pass |" in text  # zero border, masked border, spe
    assert "FAIL 3.1e-01" in text and "3.0e-07" not in text  # passes carry no digits here
    assert "- impl: masked border: has only border='zeros'" in text
    assert row.failed == ["odd block"]


def test_unknown_implementation_is_a_one_line_error(capsys):
    assert main(["conformance", "--only", "nonsense"]) == 2
    assert "--only 'nonsense' is not an implementation" in capsys.readouterr().err


def test_an_adapter_without_semantics_is_refused():
    from halo_ref import HaloRefError

    with pytest.raises(HaloRefError, match="declares no semantics"):
        conformance_table([Adapter("mine", lambda *a: None)])


def test_halo_ref_row_passes_every_cell_without_torch():
    """halo_ref's own row needs no PyTorch: every property, pad-then-crop included, passes."""
    from halo_ref.verification.conformance import build_adapters

    (row,) = conformance_table(build_adapters(["halo_ref"]))
    assert not row.failed and not row.reasons
    assert all(cell.status == "pass" for cell in row.cells.values())


@pytest.mark.torch
def test_page_matches_the_command(outside_packages, timm_halo_attn, capsys):
    """CI runs this: the table regenerated from every implementation equals the committed
    docs/conformance.md (regenerate: halo-ref conformance --markdown > docs/conformance.md)."""
    code = main(["conformance", "--check", str(PAGE)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert all(label_or_name in PAGE.read_text() for label_or_name in ("kecam", "lucidrains"))
    assert len(IMPLEMENTATIONS) == 7


@pytest.mark.torch
def test_check_reports_a_stale_page(outside_packages, tmp_path, capsys):
    stale = tmp_path / "conformance.md"
    stale.write_text(PAGE.read_text().replace("| pass |", "| FAIL 1.0e+00 |", 1))
    assert main(["conformance", "--only", "lucidrains", "--check", str(stale)]) == 1
    assert "is out of date" in capsys.readouterr().out


@pytest.mark.torch
def test_the_table_catches_lucidrains_inverted_mask(outside_packages):
    """lucidrains' issue #4 (fixed by its PR #6), planted in a copy of its layer: every cell
    of the copy with a border to mask fails; the released layer passes every cell."""
    from halo_ref.verification.torch_side import lucidrains_adapter

    good, bad = conformance_table(
        [lucidrains_adapter(), lucidrains_adapter(lucidrains_with_bool_mask(), "issue #4 copy")]
    )
    assert not good.failed
    applicable = [p.title for p in PROPERTIES if good.cells[p.title].status != NA]
    assert applicable == ["masked border", "scale_pos_embed", "odd block", "halo wider than block"]
    for title in applicable:
        assert bad.cells[title].status == "FAIL" and bad.cells[title].error > 0.01, title
    assert bad.cells["float64"].status == "FAIL"
    for title in ("dx", "grad q", "grad kv", "grad height_rel", "grad width_rel"):
        assert bad.cells[title].status == "FAIL", title
    text = render_markdown([good, bad])
    assert "| issue #4 copy | n.a. | FAIL" in text
