"""Blocks at the granularity the model names itself: timm's fine group_matcher (stage and block
index), the stages.N.blocks.M layout, and the general rule where neither names a level.

Real timm models with random weights (a few seconds each), plus small hand-built modules for the
general rule, which must hold for models timm has never seen.
"""

import copy

import pytest
import timm
import torch
import torch.nn as nn

import layerprune  # noqa: F401  (registers the CIFAR models)
from layerprune.surgery import find_blocks, remove_blocks
from layerprune.surgery.named import named_blocks


def _meta(name, **kwargs):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10, **kwargs)
    return model, [n for n, _ in model.named_modules() if n]


def _model(name, side, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval(), torch.randn(2, 3, side, side)


def _candidates(blocks):
    return [b for b in blocks if b.stage]


# -- which modules the model names ------------------------------------------------------------------
def test_group_matcher_names_stage_and_block():
    model, names = _meta("resnet18")
    named = named_blocks(model, names)
    assert named.source == "group_matcher" and named.pattern == r"^layer(\d+)\.(\d+)"
    assert named.names == {f"layer{s}.{b}" for s in range(1, 5) for b in range(2)}
    assert {"conv1", "bn1"} <= named.stem and "layer1" in named.ancestors and "" in named.ancestors


def test_group_matcher_applies_patterns_in_order_and_matches_whole_names():
    # cspnext: ^stages\.(\d+)\.\d+\.blocks\.(\d+) — an index outside the groups; the attention and
    # final convolution after the blocks belong to a later pattern with a fixed group.
    model, names = _meta("cspnext_tiny")
    named = named_blocks(model, names)
    assert named.names and all(n.startswith("stages.") and ".blocks." in n for n in named.names)
    assert not any(n.endswith((".attention", ".final_conv")) for n in named.names)
    # inner modules of a named block are not blocks themselves
    assert not any(a != b and a.startswith(b + ".") for a in named.names for b in named.names)


def test_one_index_or_function_matchers_name_nothing():
    for name in ("vit_tiny_patch16_224", "inception_v3"):  # ^blocks\.(\d+); a matcher function
        model, names = _meta(name)
        assert named_blocks(model, names).source == "none"


def test_stages_blocks_layout_where_the_matcher_is_coarse():
    model, names = _meta("gcvit_xxtiny")  # group_matcher gives ^stages\.(\d+) only
    named = named_blocks(model, names)
    assert named.source == "layout"
    assert named.names == {n for n in names if n.count(".") == 3 and ".blocks." in n and n.startswith("stages.")}


# -- discovery at the block level ---------------------------------------------------------------------
def test_gcvit_stages_are_searched_not_offered_whole():
    model, x = _model("gcvit_xxtiny", 224)
    _, names = _meta("gcvit_xxtiny")
    named = named_blocks(model, names)
    blocks = find_blocks(model, x)
    candidates = _candidates(blocks)
    offered = [b for b in candidates if b.kind != "fixed"]
    assert {b.name for b in offered} == named.names  # every block of every stage, nothing else
    assert not any(b.name.startswith("stages.") and b.name.count(".") < 3 for b in candidates)
    # every stage holds two or more blocks: all of them removable
    assert all(b.removable for b in offered)
    global_parts = [b for b in blocks if ".global_block" in b.name]
    assert global_parts and all(not b.stage and "not one of the model's own blocks" in b.reason for b in global_parts)
    pruned = remove_blocks(model, ["stages.0.blocks.1", "stages.2.blocks.3"], x, blocks=blocks)
    assert pruned(x).shape == model(x).shape


def test_efficientvit_blocks_are_whole_not_their_residual_pieces():
    # Each EfficientViT block is a chain of five residual pieces (dw0, ffn0, mixer, dw1, ffn1):
    # the block is the unit, its pieces are not offered, and neither are the downsample's.
    model, x = _model("efficientvit_m0", 224)
    blocks = find_blocks(model, x)
    candidates = _candidates(blocks)
    assert [b.name for b in candidates] == ["stages.0.blocks.0", "stages.1.blocks.0", "stages.1.blocks.1",
                                            "stages.2.blocks.0", "stages.2.blocks.1", "stages.2.blocks.2"]
    assert [b.removable for b in candidates] == [False, True, True, True, True, True]  # one per stage stays
    assert not any(b.name.endswith((".dw0", ".ffn0", ".mixer")) for b in blocks)
    # removing the chain of pieces at once is the block with its residual pieces zeroed
    name = "stages.2.blocks.1"
    pruned = remove_blocks(model, [name], x, blocks=blocks)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.get_submodule(name).parameters():
            p.zero_()
    torch.testing.assert_close(pruned(x), ref(x))


def test_cifar_resnet_and_resnet_blocks_are_timm_blocks():
    for name, side, expected in (("cifar_resnet56", 32, 27), ("resnet50", 64, 16)):
        model, x = _model(name, side)
        candidates = [b.name for b in _candidates(find_blocks(model, x))]
        assert candidates == sorted(named_blocks(model, [n for n, _ in model.named_modules()]).names,
                                    key=lambda n: tuple(int(i) for i in n.removeprefix("layer").split(".")))
        assert len(candidates) == expected


# -- the general rule, where nothing names the blocks ------------------------------------------------
class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def _conv_unit(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())


class ResidualStage(nn.Module):
    """Residual from input to output, with a chain of residual blocks inside (as a GCViT stage)."""

    def __init__(self, c: int, depth: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 1)
        self.blocks = nn.Sequential(*[Residual(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)))
                                      for _ in range(depth)])

    def forward(self, x):
        return x + self.blocks(self.proj(x))


def _net(*units, c=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.Sequential(*units),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4)).eval()


def test_a_residual_unit_holding_a_chain_of_residual_units_is_searched():
    model = _net(ResidualStage(8, 3), ResidualStage(8, 2))
    blocks = find_blocks(model, torch.randn(2, 3, 16, 16))
    assert [b.name for b in _candidates(blocks)] == [
        "1.0.blocks.0", "1.0.blocks.1", "1.0.blocks.2", "1.1.blocks.0", "1.1.blocks.1"]
    assert all(b.removable for b in _candidates(blocks))


def test_a_residual_unit_without_such_a_chain_stays_one_block():
    # One residual block inside, or a branch that is a chain of conv units (a bottleneck's): the
    # unit is the block and its inside is never offered.
    model = _net(ResidualStage(8, 1), Residual(nn.Sequential(_conv_unit(8), _conv_unit(8), _conv_unit(8))),
                 Residual(nn.Sequential(_conv_unit(8), _conv_unit(8))))
    blocks = find_blocks(model, torch.randn(2, 3, 16, 16))
    assert [b.name for b in _candidates(blocks)] == ["1.0", "1.1", "1.2"]
    assert all(b.kind == "identity" and b.removable for b in _candidates(blocks))


@pytest.mark.parametrize("name, side", [("skresnet18", 64), ("convnext_atto", 64)])
def test_blocks_with_parallel_paths_or_inline_branches_are_not_searched_inside(name, side):
    model, x = _model(name, side)
    _, names = _meta(name)
    named = named_blocks(model, names)
    candidates = _candidates(find_blocks(model, x))
    assert {b.name for b in candidates} == named.names


# -- the zoo's granularity column ----------------------------------------------------------------------
def test_coverage_counts_named_blocks_offered_and_says_why_not():
    from layerprune.surgery.named import coverage

    model, x = _model("resnet18", 64)
    names = [n for n, _ in model.named_modules() if n]
    cov = coverage(find_blocks(model, x), named_blocks(model, names))
    assert (cov.named, cov.listed, cov.removable, cov.expected) == (8, 8, 8, 4)  # 5 removable + 3 collapsible
    assert cov.complete and cov.short == {}
    # a family whose named blocks cannot go: tests/surgery/test_find_and_remove.py (DenseNet)
