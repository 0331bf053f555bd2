"""The test-only torchvision stand-in lets `import timm` build timm's HaloNets."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.torch

# timm's HaloNet family (timm 1.0): each must build through the stand-in
TIMM_HALONETS = (
    "halonet26t",
    "sehalonet33ts",
    "halonet50ts",
    "eca_halonext26ts",
    "halonet_h1",
    "haloregnetz_b",
    "lamhalobotnet50ts_256",
    "halo2botnet50ts_256",
)


@pytest.mark.parametrize("name", TIMM_HALONETS)
def test_timm_builds_every_halonet(timm, name):
    model = timm.create_model(name)
    assert any(type(m).__name__ == "HaloAttn" for m in model.modules())
    assert model.pretrained_cfg["input_size"][0] == 3


def test_placeholders_refuse_to_be_used(timm):
    import sys

    tv = sys.modules["torchvision"]
    if not getattr(tv, "__version__", "").endswith("halo_ref_stub"):
        pytest.skip("the real torchvision is installed")
    with pytest.raises(RuntimeError, match="placeholder"):
        tv.transforms.Resize(224)
    assert tv.transforms.InterpolationMode.BICUBIC.value == "bicubic"
