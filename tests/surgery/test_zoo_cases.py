"""Blocks of timm families beyond the ResNets: extra block arguments, the right level of
discovery, single removals checked, split chains, and every train/eval flag left as it was.

Real timm models with random weights, at small input sizes (and reduced widths where the
family's own constructor allows it) so that each test takes seconds.
"""

import copy

import pytest
import timm
import torch

import layerprune  # noqa: F401  (registers the CIFAR models)
from layerprune.errors import SurgeryError
from layerprune.surgery import find_blocks, model_cost, remove_blocks
from layerprune.surgery.edit import PassThrough


def _model(name, side, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval(), torch.randn(2, 3, side, side)


def _zeroed(model, names):
    """The model with the named blocks' parameters zeroed: what removing residual blocks equals."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            for p in ref.get_submodule(name).parameters():
                p.zero_()
    return ref


def _removable(blocks):
    return [b for b in blocks if b.removable]


# -- 1. blocks called with extra arguments --------------------------------------------------------
@pytest.mark.parametrize("name, side, kwargs, depth", [
    ("vit_tiny_patch16_dinov3_qkvb", 32, {"img_size": 32}, 12),  # blk(x, rope=rope)
    ("beit_base_patch16_224", 32, {"img_size": 32, "embed_dim": 64, "depth": 3, "num_heads": 2}, 3),  # shared_rel_pos_bias=
    ("xcit_nano_12_p8_224", 32, {"img_size": 32}, 12),  # blk(x, H, W)
    ("pvt_v2_b0", 64, {}, 8),  # blk(x, feat_size)
])
def test_blocks_with_extra_arguments_are_removable_and_equal_their_zeroed_branch(name, side, kwargs, depth):
    model, x = _model(name, side, **kwargs)
    blocks = find_blocks(model, x)
    identity = [b for b in blocks if b.kind == "identity" and b.removable]
    assert len(identity) == depth
    chosen = [identity[0].name, identity[-1].name]
    pruned = remove_blocks(model, chosen, x, blocks=blocks)
    assert all(isinstance(pruned.get_submodule(n), PassThrough) for n in chosen)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _zeroed(model, chosen)(x), rtol=1e-4, atol=1e-5)


def test_pass_through_returns_its_first_argument_and_ignores_the_rest():
    x = torch.randn(2, 3)
    assert PassThrough()(x, torch.ones(1), 7, rope=torch.zeros(2), feat_size=(4, 4)) is x


# -- 2. discovery at the level of the real blocks --------------------------------------------------
def test_selective_kernel_resnet_offers_its_residual_blocks_not_their_paths():
    model, x = _model("skresnet18", 64)
    blocks = find_blocks(model, x)
    names = {b.name for b in blocks if b.stage}
    assert names == {f"layer{s}.{i}" for s in range(1, 5) for i in range(2)}
    assert [b.name for b in _removable(blocks)] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert all(b.collapsible for b in blocks if b.name.endswith(".0") and b.name != "layer1.0")


def test_focalnet_offers_the_blocks_of_each_stage_not_their_focal_layers():
    model, x = _model("focalnet_tiny_srf", 64)
    blocks = find_blocks(model, x)
    offered = [b.name for b in blocks if b.stage]
    assert offered == [f"layers.{s}.blocks.{i}" for s, n in enumerate((2, 2, 6, 2)) for i in range(n)]
    assert all(b.removable and b.kind == "identity" for b in blocks if b.stage)
    assert not any("focal_layers" in b.name for b in blocks)
    downsample = {b.name: b for b in blocks}["layers.1.downsample"]
    assert not downsample.stage and downsample.reason.startswith("part of 'layers.1', not one of the model's own blocks")


def test_ghostnet_offers_ghost_bottlenecks_not_their_cheap_operations():
    model, x = _model("ghostnet_050", 64)
    blocks = find_blocks(model, x)
    assert not any("cheap_operation" in b.name or "ghost" in b.name for b in blocks)
    bottlenecks = [b for b in blocks if b.stage]
    assert all(type(model.get_submodule(b.name)).__name__ == "GhostBottleneck" for b in bottlenecks
               if b.kind != "fixed")
    removable = _removable(blocks)
    assert len(removable) >= 6 and all(b.kind == "identity" for b in removable)
    pruned = remove_blocks(model, [removable[0].name], x, blocks=blocks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _zeroed(model, [removable[0].name])(x), rtol=1e-4, atol=1e-5)


def test_mobileone_offers_only_blocks_it_can_remove():
    model, x = _model("mobileone_s1", 64)
    blocks = find_blocks(model, x)
    removable = _removable(blocks)
    assert len(removable) > 10
    assert all(b.stage.count(".") == 1 for b in removable)  # stages.N.M, not the branches inside
    by_stage = {}
    for b in removable:
        by_stage.setdefault(b.stage, []).append(b.name)
    # one from each stage at once, and one alone
    remove_blocks(model, [names[0] for names in by_stage.values()], x, blocks=blocks)
    remove_blocks(model, [removable[-1].name], x, blocks=blocks)


def test_the_only_block_of_a_stage_is_listed_but_not_removable():
    model, x = _model("efficientnet_b0", 64)
    blocks = {b.name: b for b in find_blocks(model, x)}
    only = blocks["blocks.1.1"]  # stage blocks.1 = [downsampling block, this residual block]
    assert only.kind == "identity" and only.removable
    model, x = _model("ghostnet_050", 64)
    blocks = {b.name: b for b in find_blocks(model, x)}
    single = blocks["blocks.0.0"]
    assert single.kind == "identity" and not single.removable and "only block of stage 'blocks.0'" in single.reason
    with pytest.raises(SurgeryError, match=r"'blocks.0.0' cannot be removed: only block of stage 'blocks.0'"):
        remove_blocks(model, ["blocks.0.0"], x, blocks=list(blocks.values()))


# -- 3. what is reported removable can be removed alone ---------------------------------------------
def test_every_removable_block_of_cs3darknet_can_be_removed_alone():
    # Torch-Pruning cannot trace this model at all (its split → blocks → concat), removal or not:
    # blocks are checked by running the model, and the reason says so.
    model, x = _model("cs3darknet_focus_s", 64)
    blocks = find_blocks(model, x)
    removable = _removable(blocks)
    assert len(removable) == 7 and all("cannot trace this model" in b.reason for b in removable)
    for b in removable:
        pruned = remove_blocks(model, [b.name], x, blocks=blocks)
        assert pruned(x).shape == (2, 10)


# -- 4. a break in a chain splits the stage --------------------------------------------------------
def test_convit_class_token_splits_its_blocks_into_two_stages():
    model, x = _model("convit_tiny", 32, img_size=32)
    blocks = [b for b in find_blocks(model, x) if b.stage]
    assert [b.stage for b in blocks] == ["blocks[0:10]"] * 10 + ["blocks[10:12]"] * 2
    assert all(b.removable for b in blocks)
    pruned = remove_blocks(model, ["blocks.9", "blocks.10"], x, blocks=blocks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _zeroed(model, ["blocks.9", "blocks.10"])(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(SurgeryError, match=r"would empty stage 'blocks\[10:12\]'"):
        remove_blocks(model, ["blocks.10", "blocks.11"], x, blocks=blocks)


# -- 5. DLA: its trees ------------------------------------------------------------------------------
def test_dla_offers_its_second_subtrees_and_says_why_the_rest_stay():
    # timm names levelN.treeM as DLA's blocks: the second tree of every level can go, the first
    # (which changes the resolution, no shortcut) stays.
    model, x = _model("dla46x_c", 64)
    blocks = find_blocks(model, x)
    assert [b.name for b in _removable(blocks)] == [f"level{n}.tree2" for n in (2, 3, 4, 5)]
    assert [b.name for b in blocks if b.stage and not b.removable] == [f"level{n}.tree1" for n in (2, 3, 4, 5)]
    assert all(b.reason for b in blocks)
    remove_blocks(model, ["level3.tree2"], x, blocks=blocks)


# -- 6. every submodule's own train/eval flag survives ---------------------------------------------
def test_find_remove_and_cost_leave_every_train_flag_as_it_was():
    model, x = _model("resnet18", 64)
    model.train()
    model.bn1.eval()
    model.layer2[0].bn2.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    blocks = find_blocks(model, x)
    pruned = remove_blocks(model, ["layer1.1"], x, blocks=blocks)
    model_cost(model, x)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert not pruned.bn1.training and pruned.layer1[0].bn1.training


# -- 8. smaller -------------------------------------------------------------------------------------
def test_an_example_input_that_is_not_a_tensor_is_a_surgery_error():
    model, x = _model("resnet18", 64)
    with pytest.raises(SurgeryError, match="example_input must be one tensor.*list"):
        find_blocks(model, [x])
    with pytest.raises(SurgeryError, match="example_input must be one tensor"):
        remove_blocks(model, ["layer1.1"], (x,))


def test_collapsing_the_only_block_of_a_stage_keeps_its_shortcut():
    model, x = _model("resnet10t", 64)
    blocks = find_blocks(model, x)
    only = {b.name: b for b in blocks}["layer2.0"]
    assert only.collapsible and not only.removable
    pruned = remove_blocks(model, ["layer2.0"], x, collapse=True, blocks=blocks)
    assert pruned(x).shape == (2, 10)
    # and a whole stage of a deeper model, its first block collapsed and the rest removed
    model, x = _model("cifar_resnet20", 32)
    pruned = remove_blocks(model, ["layer2.0", "layer2.1", "layer2.2"], x, collapse=True)
    assert pruned(x).shape == (2, 10)
