"""Checkpoints in the formats people have: community CIFAR-ResNet layout, wrappers, old releases."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import layerprune  # noqa: F401
from layerprune.errors import CheckpointError
from layerprune.models import load_checkpoint


class _CommunityBlock(nn.Module):
    """The widely shared CIFAR-ResNet block: functional ReLUs, option-A pad as a closure-free
    module, empty ``nn.Sequential`` shortcut when shapes match."""

    def __init__(self, in_planes, planes, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        self.pad = None
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.pad = planes // 4
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is not None:
            out = out + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            out = out + self.shortcut(x)
        return F.relu(out)


class _CommunityResNet(nn.Module):
    def __init__(self, n, option="A", num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(_CommunityBlock(in_planes, planes, s, option))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).flatten(1)
        return self.linear(out)


def _randomise_bn(model):
    """Non-trivial running statistics, so a wrong mapping of BN buffers would show."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("option", ["A", "B"])
def test_community_checkpoint_from_dataparallel_in_legacy_format_loads(tmp_path, option):
    community = _randomise_bn(_CommunityResNet(n=3, option=option))
    # How such checkpoints were published: DataParallel keys, wrapped with training metadata,
    # written by a PyTorch release older than the zip format.
    checkpoint = {
        "epoch": 200,
        "best_prec1": 91.73,
        "state_dict": {f"module.{k}": v for k, v in community.state_dict().items()},
    }
    path = tmp_path / "resnet20.th"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)

    model = load_checkpoint(timm.create_model("cifar_resnet20", shortcut=option), path).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), community(x))


def test_bare_state_dict_and_compiled_prefix(tmp_path):
    source = _randomise_bn(timm.create_model("cifar_resnet20"))
    bare, compiled = tmp_path / "bare.pth", tmp_path / "compiled.pth"
    torch.save(source.state_dict(), bare)
    torch.save({"model_state_dict": {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}}, compiled)
    x = torch.randn(2, 3, 32, 32)
    for path in (bare, compiled):
        model = load_checkpoint(timm.create_model("cifar_resnet20"), path).eval()
        torch.testing.assert_close(model(x), source(x))


def test_wrong_depth_lists_missing_keys(tmp_path):
    path = tmp_path / "r20.pth"
    torch.save(timm.create_model("cifar_resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit CifarResNet: \d+ missing: layer1\.3\.") as info:
        load_checkpoint(timm.create_model("cifar_resnet32"), path)
    assert "more)" in str(info.value)  # long listings are cut, with a count


def test_wrong_class_count_reports_shape_mismatch(tmp_path):
    path = tmp_path / "r20_100.pth"
    torch.save(timm.create_model("cifar_resnet20", num_classes=100).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: linear\.weight \(100, 64\) vs model \(10, 64\)"):
        load_checkpoint(timm.create_model("cifar_resnet20"), path)


def test_unexpected_keys_are_listed(tmp_path):
    state = timm.create_model("cifar_resnet20").state_dict()
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected: extra\.weight"):
        load_checkpoint(timm.create_model("cifar_resnet20"), path)


def test_failed_load_leaves_model_unchanged(tmp_path):
    path = tmp_path / "r20_100.pth"
    torch.save(timm.create_model("cifar_resnet20", num_classes=100).state_dict(), path)
    model = timm.create_model("cifar_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _NotWeights:
    pass


def test_missing_garbage_and_unsafe_files_are_one_line_errors(tmp_path):
    model = timm.create_model("cifar_resnet20")
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_checkpoint(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, garbage)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": model.state_dict(), "trainer": _NotWeights()}, unsafe)
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_checkpoint(model, unsafe)
    assert "\n" not in str(info.value)


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_checkpoint(timm.create_model("cifar_resnet20"), path)
