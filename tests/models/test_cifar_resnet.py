import pytest
import timm
import torch

import layerprune  # noqa: F401
from layerprune.models import BasicBlock, CifarResNet, PadShortcut

# He et al. 2016 (Table 6): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M with option-A shortcuts.
OPTION_A_PARAMS = {
    "cifar_resnet20": 269_722,
    "cifar_resnet32": 464_154,
    "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962,
}
# Option B adds two 1×1 conv + BN projections: (16·32 + 2·32) + (32·64 + 2·64) = 2,752.
OPTION_B_EXTRA = 2_752


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", OPTION_A_PARAMS.items())
def test_option_a_parameter_counts_match_the_paper(name, expected):
    assert n_params(timm.create_model(name)) == expected


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56", "cifar_resnet110"])
def test_option_b_adds_exactly_the_two_projections(name):
    assert n_params(timm.create_model(name, shortcut="B")) == OPTION_A_PARAMS[name] + OPTION_B_EXTRA


def test_num_classes_changes_only_the_classifier():
    # 64 features × 90 extra classes, plus 90 biases.
    assert n_params(timm.create_model("cifar_resnet56", num_classes=100)) == 853_018 + 90 * 65


@pytest.mark.parametrize("depth, per_stage", [(20, 3), (56, 9), (110, 18)])
def test_depth_gives_blocks_per_stage(depth, per_stage):
    model = CifarResNet(depth=depth)
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == per_stage
        assert all(isinstance(b, BasicBlock) for b in stage)


def test_bad_depth_and_shortcut_are_refused():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="shortcut must be 'A' or 'B'"):
        CifarResNet(depth=20, shortcut="C")


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_only_downsampling_blocks_have_a_non_identity_shortcut():
    model = CifarResNet(depth=20, shortcut="B")
    shortcuts = {name for name, m in model.named_modules()
                 if name.endswith("shortcut") and not isinstance(m, torch.nn.Identity)}
    assert shortcuts == {"layer2.0.shortcut", "layer3.0.shortcut"}


def test_stage_output_shapes():
    model = CifarResNet(depth=20).eval()
    x = model.act1(model.bn1(model.conv1(torch.randn(1, 3, 32, 32))))
    shapes = []
    for stage in (model.layer1, model.layer2, model.layer3):
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
