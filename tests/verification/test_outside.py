"""Outside implementations against the golden vectors: lucidrains' halonet-pytorch, kecam and
FlexAttention each pass exactly the vectors their semantics cover, and a copy of lucidrains'
layer with its historical inverted padding mask fails them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from helpers import lucidrains_with_bool_mask

from halo_ref import HaloRefError
from halo_ref.cli.main import main
from halo_ref.verification.adapters import OUTSIDE_NAMES, resolve_adapter
from halo_ref.verification.semantics import FLEX, KECAM, LUCIDRAINS, Semantics
from halo_ref.verification.vectors import CONFIG_GRID, PAD_GRID, generate_vectors
from halo_ref.verification.verify import FAIL, NOT_APPLICABLE, PASS, verify

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def layer_vectors():
    """The layer vectors `halo-ref verify` runs: the fixed grid and the pad-then-crop ones."""
    return generate_vectors(configs=CONFIG_GRID + PAD_GRID, models=())


def _expected(semantics: Semantics):
    """Names of the grid's configurations that `semantics` can express (no outside adapter
    declares the pad-then-crop rule, so PAD_GRID's vectors are never among them)."""
    return [c.name for c in CONFIG_GRID if semantics.reason(c.to_json()) is None]


def test_semantics_name_the_first_missing_property():
    spe = next(c for c in CONFIG_GRID if c.name == "scale_pos_embed-mask").to_json()
    assert LUCIDRAINS.reason(spe) is None
    assert KECAM.reason(spe) == "has only border='zeros'"
    basic = next(c for c in CONFIG_GRID if c.name == "basic-mask").to_json()
    assert LUCIDRAINS.reason(basic) == "has only scale_pos_embed=True"
    assert FLEX.reason(basic) is None
    # the grid's lucidrains-shaped vectors: masked border, scaled position logits, d_v = d_qk
    assert _expected(LUCIDRAINS) == ["scale_pos_embed-mask"]
    assert len(_expected(KECAM)) == 10


def _check_exactly_applicable(report, semantics):
    expected = _expected(semantics)
    assert report.passed, report.render()
    for r in report.results:
        assert r.status == (PASS if r.name in expected else NOT_APPLICABLE), (r.name, r.note)
    pads = {c.name for c in PAD_GRID}
    assert {r.name for r in report.results} >= pads  # run, and reported n/a


@pytest.mark.torch
def test_lucidrains_passes_what_it_implements(outside_packages, layer_vectors):
    from halo_ref.verification.torch_side import lucidrains_adapter

    _check_exactly_applicable(verify(lucidrains_adapter(), layer_vectors), LUCIDRAINS)


@pytest.mark.torch
def test_lucidrains_historical_inverted_mask_fails(outside_packages, layer_vectors):
    from halo_ref.verification.torch_side import lucidrains_adapter

    adapter = lucidrains_adapter(lucidrains_with_bool_mask(), name="lucidrains, issue #4 mask")
    report = verify(adapter, layer_vectors)
    assert not report.passed
    assert report.failing_names == _expected(LUCIDRAINS)
    assert all(r.status == FAIL for r in report.failed)


@pytest.mark.torch
def test_kecam_passes_what_it_implements(outside_packages, layer_vectors):
    from halo_ref.verification.torch_side import kecam_adapter

    report = verify(kecam_adapter(), layer_vectors)
    _check_exactly_applicable(report, KECAM)
    # kecam pools only for odd blocks: avg_down with an even block is not expressible
    (avg,) = [
        r for r in report.results if r.name == "stride2_avg_down-zeros" and r.dtype == "float64"
    ]
    assert avg.note == "has no avg_down (it pools only for odd blocks)"


@pytest.mark.torch
def test_flex_forward_passes_every_vector(torch, layer_vectors):
    from halo_ref.verification.torch_side import flex_adapter

    report = verify(flex_adapter(), layer_vectors)
    _check_exactly_applicable(report, FLEX)
    assert "gradients not given (forward only)" in report.table()


@pytest.mark.torch
def test_flex_eager_backward_passes_float64(torch, layer_vectors):
    from halo_ref.verification.torch_side import flex_adapter

    vectors = [v for v in layer_vectors if v.dtype == "float64" and v.name not in PAD_NAMES]
    report = verify(flex_adapter(backward=True), vectors)
    assert report.passed, report.render()
    assert len(report.applicable) == len(CONFIG_GRID)
    assert all(
        any(c.name == "grad/pos_embed.height_rel" for c in r.comparisons) for r in report.results
    )


PAD_NAMES = {c.name for c in PAD_GRID}


@pytest.mark.torch
def test_flex_refuses_cpu_backward_outside_the_context(torch):
    """The guard the backward variant lifts is real: the public API refuses CPU backward."""
    from torch.nn.attention import flex_attention as fa

    q = torch.zeros(1, 1, 4, 2, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        fa.flex_attention(q, q, q)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["lucidrains", "kecam", "flex", "flex:backward"])
def test_cli_verify_against_outside(outside_packages, capsys, name):
    """The acceptance commands, as CI runs them (timm's: tests/verification/test_verify.py)."""
    assert main(["verify", "--against", name, "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"PASSED: \d+ of \d+ applicable vectors pass", out)


@pytest.mark.torch
def test_the_cli_names_are_the_adapters_torch_side_builds(torch):
    from halo_ref.verification.torch_side import OUTSIDE_ADAPTERS

    assert tuple(OUTSIDE_ADAPTERS) == OUTSIDE_NAMES


def test_unknown_adapter_lists_the_outside_names():
    with pytest.raises(HaloRefError, match="lucidrains, kecam, flex, flex:backward"):
        resolve_adapter("nonsense")


@pytest.mark.torch
def test_flex_page_shows_the_function_verbatim(torch):
    from halo_ref.verification import torch_side

    page = (ROOT / "docs" / "flex_attention.md").read_text()
    assert inspect.getsource(torch_side.flex_halo_attention) in page


@pytest.mark.torch
def test_params_shows_kecams_counts(outside_packages, capsys):
    """kecam's H0-H7 have exactly halo_ref's parameter counts (docs/models.md)."""
    from halo_ref.models import count_params, halonet
    from halo_ref.verification.adapters import kecam_param_counts

    counts = kecam_param_counts(["h0", "h3"])
    assert counts == {n: count_params(halonet(n, num_classes=1000)) for n in ("h0", "h3")}
    assert main(["params", "--models", "h0,micro"]) == 0
    out = capsys.readouterr().out
    assert "kecam" in out.splitlines()[0] and "(differs)" not in out
    assert main(["params", "--models", "h0", "--no-kecam"]) == 0
    assert "kecam" not in capsys.readouterr().out.splitlines()[0]
