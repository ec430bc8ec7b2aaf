"""Blocks no pass-through can replace: a shortcut without parameters (``ZeroPadShortcut``) for
blocks that change shape, zeros of a dense layer's output (``Zeros(channels)``), on real timm models."""

import pytest
import timm
import torch

import layerprune  # noqa: F401  (registers the CIFAR models)
from layerprune.errors import SurgeryError
from layerprune.surgery import find_blocks, remove_blocks
from layerprune.surgery.blocks import StagePlan, stages
from layerprune.surgery.edit import ZeroPadShortcut, Zeros, parse_stand_in
from layerprune.surgery.named import coverage, named_blocks


def test_zero_pad_shortcut_strides_like_a_padded_conv_and_pads_or_cuts_channels():
    x = torch.randn(2, 6, 7, 7)
    conv = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1)
    y = ZeroPadShortcut(10, 2)(x)
    assert y.shape == conv(x).shape == (2, 10, 4, 4)
    assert torch.equal(y[:, :6], x[:, :, ::2, ::2]) and not y[:, 6:].any()
    assert torch.equal(ZeroPadShortcut(4)(x), x[:, :4])  # narrower: the first channels
    assert torch.equal(ZeroPadShortcut(6)(x), x)
    tokens = torch.randn(2, 6, 9)  # one spatial dimension
    assert torch.equal(ZeroPadShortcut(6, 3)(tokens), tokens[:, :, ::3])


def test_stand_in_names_round_trip_and_bad_ones_are_refused():
    assert isinstance(parse_stand_in("shortcut:96:2"), ZeroPadShortcut)
    assert (parse_stand_in("shortcut:96:2").channels, parse_stand_in("shortcut:96:2").stride) == (96, 2)
    assert parse_stand_in("zeros:32").channels == 32 and isinstance(parse_stand_in("zeros"), Zeros)
    for bad in ("shortcut:0", "shortcut:", "shortcut:8:2:1", "zeros:x", "zeros:0", "pad:8"):
        with pytest.raises(SurgeryError, match="unknown stand-in"):
            parse_stand_in(bad)
    features = [torch.randn(2, 5, 3, 3), torch.randn(2, 7, 3, 3)]
    assert Zeros(4)(features).shape == (2, 4, 3, 3)


def test_blocks_that_change_shape_collapse_to_a_shortcut_without_parameters(saved_traced_exported):
    # MobileOne's blocks are single re-parameterisable convolutions; the first two of a stage stride
    # and widen, with no shortcut. They are offered by collapse only (the function changes as for
    # a plain block), so every block timm names is offered but one per stage.
    model = timm.create_model("mobileone_s0").eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(model, x)
    shaped = [b for b in blocks if b.stage and b.in_shape != b.out_shape]
    assert len(shaped) == 7
    assert all(b.kind == "collapse" and not b.removable and not b.collapse_to and b.params > 0 for b in shaped)
    assert {b.name: b.stand_in for b in shaped}["stages.1.1"] == "shortcut:128"
    assert {b.name: b.stand_in for b in shaped}["stages.2.0"] == "shortcut:128:2"
    cov = coverage(blocks, named_blocks(model, [n for n, _ in model.named_modules() if n]))
    assert cov.complete and cov.removable == cov.named

    with pytest.raises(SurgeryError, match="only with collapse=True"):
        remove_blocks(model, ["stages.1.1"], x, blocks=blocks)
    chosen = {"stages.1.0": "shortcut:48:2", "stages.2.1": "shortcut:256", "stages.3.1": "shortcut:1024"}
    pruned = remove_blocks(model, [*chosen, "stages.2.3"], x, blocks=blocks, collapse=True)
    by_name = {b.name: b for b in blocks}
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) \
        == sum(by_name[n].params for n in [*chosen, "stages.2.3"])
    saved_traced_exported(pruned, "mobileone_s0", {}, x, chosen)


def test_a_collapse_without_parameters_counts_against_its_stage():
    # A collapse to a shortcut module leaves that module (the stage keeps something); one to a
    # shortcut without parameters leaves nothing, so a stage of two such blocks keeps one.
    blocks = find_blocks(timm.create_model("mobileone_s0").eval(), torch.randn(1, 3, 64, 64))
    last = stages(blocks)["stages.3"]
    assert [b.kind for b in last] == ["collapse", "collapse"]
    plan = StagePlan(blocks)
    assert plan.try_remove(last[0]) and not plan.try_remove(last[1])
    with pytest.raises(SurgeryError, match="would empty stage"):
        remove_blocks(timm.create_model("mobileone_s0").eval(), [b.name for b in last], torch.randn(1, 3, 64, 64),
                      blocks=blocks, collapse=True)


def test_the_stem_is_never_a_collapse():
    # the CIFAR VGG's first conv is its stem (group_matcher), though it sits in stages.0
    blocks = {b.name: b for b in find_blocks(timm.create_model("cifar_vgg16_bn").eval(), torch.randn(1, 3, 32, 32))}
    assert blocks["stages.0.0"].kind == "fixed" and blocks["stages.0.0"].reason.startswith("stem")
    assert blocks["stages.1.0"].kind == "collapse" and blocks["stages.1.0"].stand_in == "shortcut:128"
