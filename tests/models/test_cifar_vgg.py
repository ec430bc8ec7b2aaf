import pytest
import timm
import torch

import layerprune  # noqa: F401
from layerprune.models import CifarVGG, ConvUnit

# Conv units (3×3 conv with bias + BN) and a single 512 → 10 linear classifier; VGG-16-BN matches
# the widely used CIFAR form (14.73M).
PARAMS = {
    "cifar_vgg11_bn": 9_231_114,
    "cifar_vgg13_bn": 9_416_010,
    "cifar_vgg16_bn": 14_728_266,
    "cifar_vgg19_bn": 20_040_522,
}
UNITS = {"cifar_vgg11_bn": 8, "cifar_vgg13_bn": 10, "cifar_vgg16_bn": 13, "cifar_vgg19_bn": 16}


@pytest.mark.parametrize("name, expected", PARAMS.items())
def test_parameter_counts(name, expected):
    assert sum(p.numel() for p in timm.create_model(name).parameters()) == expected


@pytest.mark.parametrize("name, expected", UNITS.items())
def test_every_conv_bn_relu_is_one_named_unit(name, expected):
    model = timm.create_model(name)
    units = [n for n, m in model.named_modules() if isinstance(m, ConvUnit)]
    assert len(units) == expected
    assert all(n.startswith("stages.") and len(n.split(".")) == 3 for n in units)
    # Every conv and BN lives inside a unit.
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.rsplit(".", 1)[0] for c in convs} == set(units)


def test_five_stages_each_halve_the_resolution():
    model = CifarVGG(depth=16).eval()
    x = torch.randn(1, 3, 32, 32)
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
    assert sizes == [16, 8, 4, 2, 1]


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="depth must be one of"):
        CifarVGG(depth=15)
