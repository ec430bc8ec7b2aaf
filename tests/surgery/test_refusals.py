"""Every refusal is a SurgeryError with a reason, and the input model stays as it was."""

import pytest
import timm
import torch

import layerprune  # noqa: F401
from layerprune.errors import SurgeryError
from layerprune.surgery import find_blocks, remove_blocks


@pytest.fixture(scope="module")
def resnet56():
    model = timm.create_model("cifar_resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    return model, x, find_blocks(model, x)


@pytest.mark.parametrize("names, collapse, message", [
    (["conv1"], False, "block 'conv1' cannot be removed: stem, not a block"),
    (["linear"], False, "block 'linear' cannot be removed: head, not a block"),
    (["layer2.10"], False, "unknown block 'layer2.10'; did you mean 'layer2.1'"),
    ([f"layer1.{i}" for i in range(9)], False, "would empty stage 'layer1'"),
    (["layer2.0"], False, r"block 'layer2.0' cannot be removed: downsampling residual \(16×32×32 → 32×16×16\).*collapse=True"),
    (["layer1.1", "layer1.1"], False, "block 'layer1.1' is named more than once"),
])
def test_refusals_name_the_block_and_leave_the_model_unchanged(resnet56, names, collapse, message):
    model, x, blocks = resnet56
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_modules = [n for n, _ in model.named_modules()]
    with pytest.raises(SurgeryError, match=message):
        remove_blocks(model, names, x, collapse=collapse, blocks=blocks)
    assert [n for n, _ in model.named_modules()] == before_modules
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())


def test_refusal_without_precomputed_blocks(resnet56):
    model, x, _ = resnet56
    with pytest.raises(SurgeryError, match="'layer3.0' cannot be removed"):
        remove_blocks(model, ["layer3.0"], x)


def test_an_input_the_model_cannot_take_is_a_surgery_error():
    model = timm.create_model("cifar_resnet20").eval()
    with pytest.raises(SurgeryError, match=r"CifarResNet: forward pass failed on input \(1, 3, 0, 0\)"):
        find_blocks(model, torch.randn(1, 3, 0, 0))


def test_find_and_remove_leave_every_submodules_train_flag_as_it_was():
    from layerprune import create_model

    model = create_model("cifar_resnet20", num_classes=10).train()
    model.layer2.eval()  # a frozen part inside a model being trained
    before = {name: m.training for name, m in model.named_modules()}
    x = torch.randn(2, 3, 32, 32)
    find_blocks(model, x)
    remove_blocks(model, ["layer1.1"], x)
    assert {name: m.training for name, m in model.named_modules()} == before
