"""Blocks that pass a tuple between them (``x, feat_size = blk(x, feat_size)`` in MViT v2, TNT's
``(pixel_embed, patch_embed)``): found, removed as a pass-through of what they were given in the
structure they returned, saved and loaded, traced, exported and scored."""

import pytest
import timm
import torch
import torch.nn as nn

from layerprune import build_dataset, find_blocks, get_criterion, remove_blocks
from layerprune.criteria import ScoringContext
from layerprune.errors import SurgeryError
from layerprune.surgery.edit import PassThrough, parse_stand_in
from layerprune.surgery.named import coverage, named_blocks

MVIT_ARGS = {"num_classes": 10, "in_chans": 1, "img_size": 32}


@pytest.fixture(scope="module")
def mvit():
    torch.manual_seed(0)
    model = timm.create_model("mvitv2_tiny", **MVIT_ARGS).eval()
    x = torch.randn(2, 1, 32, 32)
    return model, x, find_blocks(model, x)


def test_mvit_blocks_but_the_first_of_each_stage_pass_their_tuple_on(mvit):
    model, _, blocks = mvit
    removable = [b for b in blocks if b.removable]
    assert removable and all(b.stand_in == "tuple:2" and b.kind == "identity" for b in removable)
    # the first block of a stage changes the token count and feat_size: not its arguments passed on
    first = {b.name: b for b in blocks}["stages.1.blocks.0"]
    assert not first.removable and "not its first arguments passed on" in first.reason
    names = [n for n, m in model.named_modules() if n and next(m.parameters(), None) is not None]
    cover = coverage(blocks, named_blocks(model, names))
    assert cover.complete and cover.removable == cover.named - 4  # one kept per stage, four stages


def test_removed_tuple_blocks_run_save_load_trace_and_export(mvit, saved_traced_exported):
    model, x, blocks = mvit
    names = [b.name for b in blocks if b.removable]
    pruned = remove_blocks(model, names, x, blocks=blocks)
    for name in names:
        stand_in = pruned.get_submodule(name)
        assert isinstance(stand_in, PassThrough) and stand_in.passes == 2 and not stand_in.as_list
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    ref = saved_traced_exported(pruned, "mvitv2_tiny", MVIT_ARGS, x, {n: "tuple:2" for n in names})
    assert ref.shape == (2, 10)


class _ListBlock(nn.Module):
    """Returns ``[x, scale]`` as a list: residual in x with scale passed on, or (``mode``) with a
    changed scale, or not residual."""

    def __init__(self, dim: int, mode: str = "residual") -> None:
        super().__init__()
        self.fc, self.norm, self.mode = nn.Linear(dim, dim), nn.LayerNorm(dim), mode

    def forward(self, x, scale):
        if self.mode == "plain":
            return [torch.relu(self.fc(self.norm(x))), scale]
        return [x + self.fc(self.norm(x)) * scale, scale + 1 if self.mode == "scale" else scale]


class _ListNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([_ListBlock(8), _ListBlock(8), _ListBlock(8, "scale"), _ListBlock(8, "plain")])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x, scale = self.embed(x), 2.0
        for blk in self.blocks:
            x, scale = blk(x, scale)
        return self.head(x * scale)


def test_a_list_is_passed_on_as_a_list_and_a_changed_item_is_no_pass_through():
    """[x, scale] in, [x', scale'] out."""
    model = _ListNet().eval()
    x = torch.randn(2, 4)
    blocks = {b.name: b for b in find_blocks(model, x)}
    assert blocks["blocks.0"].removable and blocks["blocks.0"].stand_in == "list:2"
    # blocks.2 returns scale + 1, not its argument: its stand-in would give None, and the model
    # cannot run on that; blocks.3 is not residual: removable as a plain unit, like a VGG layer
    assert not blocks["blocks.2"].removable and "model fails without it" in blocks["blocks.2"].reason
    assert blocks["blocks.3"].kind == "plain" and blocks["blocks.3"].removable and blocks["blocks.3"].stand_in == "list:2"
    pruned = remove_blocks(model, ["blocks.0"], x)
    given = torch.randn(1, 8)
    out = pruned.blocks[0](given, 2.0)
    assert isinstance(out, list) and out[0] is given and out[1] == 2.0
    with torch.no_grad():
        assert torch.isfinite(pruned(x)).all()


def test_unknown_stand_in_is_a_clear_error():
    assert parse_stand_in("tuple:3").passes == 3
    with pytest.raises(SurgeryError, match="unknown stand-in 'zeros:x'"):
        parse_stand_in("zeros:x")


def test_criteria_read_the_stream_with_a_row_per_sample_in_tnt():
    """TNT's blocks return (pixel_embed, patch_embed): pixel_embed has a row per patch, the patch
    stream a row per image — features are read from the latter and every block is scored."""
    torch.manual_seed(0)
    model = timm.create_model("tnt_s_patch16_224", num_classes=10, in_chans=1, img_size=32).eval()
    ctx = ScoringContext(model, build_dataset("digits", seed=0), samples=32, batches=1)
    assert [b.name for b in ctx.scorable] == [f"blocks.{i}" for i in range(12)]
    for name in ("modularity", "taylor"):
        scores = get_criterion(name)(ctx).scores
        assert set(scores) >= {f"blocks.{i}" for i in range(1, 12)}
        assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())


class _HiddenBlock(nn.Module):
    """``x, h = blk(x)``: residual in x, and a hidden state that the next block overwrites."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.state = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(x), self.state(x)


class _HiddenNet(nn.Module):
    """EfficientViM's pattern: only the last block's hidden state reaches the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([_HiddenBlock(8) for _ in range(3)])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x, h = self.embed(x), None
        for blk in self.blocks:
            x, h = blk(x)
        return self.head(x + h.tanh())


def test_a_hidden_state_nobody_reads_becomes_none_and_the_one_the_head_reads_stays():
    model = _HiddenNet().eval()
    x = torch.randn(2, 4)
    blocks = {b.name: b for b in find_blocks(model, x)}
    assert blocks["blocks.0"].removable and blocks["blocks.0"].stand_in == "tuple:1+1"
    assert blocks["blocks.1"].removable
    # the last block's hidden state is read by the head: without it the model fails
    assert not blocks["blocks.2"].removable and "model fails without it" in blocks["blocks.2"].reason
    pruned = remove_blocks(model, ["blocks.0", "blocks.1"], x)
    assert pruned.blocks[0](torch.ones(2, 8))[1] is None
    with torch.no_grad():
        assert pruned(x).shape == (2, 3)
    assert parse_stand_in("tuple:1+2").nones == 2
