"""halo_ref.models.configs: the paper's table becomes configurations, and the channel rules."""

from __future__ import annotations

import pytest

from halo_ref.models.configs import CONFIGS, PAPER_TABLE, input_multiple, value_channels
from halo_ref.nn.init import make_divisible


def test_make_divisible_rounds_to_eight_without_losing_a_tenth():
    assert [make_divisible(v) for v in (3, 12, 20, 64, 70, 100)] == [8, 16, 24, 64, 72, 104]


@pytest.mark.parametrize("row", PAPER_TABLE, ids=[r[0] for r in PAPER_TABLE])
def test_each_paper_row_sets_its_blocks_halos_widths_and_depth(row):
    name, b, h, rv, rb, l3, df, image, _, _ = row
    cfg = CONFIGS[name]
    assert [s.depth for s in cfg.stages] == [3, 3, l3, 3] and cfg.final_chs == df
    assert all((s.block_size, s.halo_size, s.value_mult) == (b, h, rv) for s in cfg.stages)
    assert [s.out for s in cfg.stages] == [make_divisible(m * rb) for m in (64, 128, 256, 512)]
    assert value_channels(cfg.stages[0]) == make_divisible(64 * rv)
    assert cfg.image_size == image and cfg.pad_to_blocks


def test_input_multiple_is_what_every_stride_and_block_needs():
    assert input_multiple(CONFIGS["micro"]) == 8  # 4x4 blocks, then a stride-2 stage of 4x4
    assert input_multiple(CONFIGS["tiny"]) == 32  # stride 2 stem, 8x8 blocks, two more strides
