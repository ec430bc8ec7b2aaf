"""Checkpoints in the formats people have: community CIFAR-ResNet layout, wrappers, old releases."""

import argparse
import random
import warnings
import zipfile

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


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_checkpoint(timm.create_model("cifar_resnet20"), tmp_path / "nope.pth")


def _truncated_zip(path):
    torch.save(timm.create_model("cifar_resnet20").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_legacy(path):
    torch.save(timm.create_model("cifar_resnet20").state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_of_other_things(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not weights")


NOT_CHECKPOINTS = {
    "random bytes": (lambda p: p.write_bytes(random.Random(0).randbytes(5000)), r"a binary file \(starting [0-9a-f ]+\), not a PyTorch checkpoint"),
    "text": (lambda p: p.write_text("epoch,acc\n1,0.5\n"), r"a text file \(starting 'epoch,acc'\), not a PyTorch checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "an empty file, not a PyTorch checkpoint"),
    "truncated zip": (_truncated_zip, "a damaged or truncated zip archive .*interrupted"),
    "truncated legacy": (_truncated_legacy, "a damaged or truncated PyTorch checkpoint .*interrupted"),
    "other zip": (_zip_of_other_things, r"a zip archive without data.pkl, not a PyTorch checkpoint \(it holds notes.txt\)"),
}


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, kind):
    make, message = NOT_CHECKPOINTS[kind]
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(timm.create_model("cifar_resnet20"), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "weights_only" not in str(info.value)  # not mistaken for a checkpoint with pickled objects


def test_a_checkpoint_with_pickled_objects_names_them(tmp_path):
    model = timm.create_model("cifar_resnet20")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1), "trainer": _NotWeights()}, unsafe)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \((argparse\.Namespace|.*_NotWeights)\)") as info:
        load_checkpoint(model, unsafe)
    assert "\n" not in str(info.value) and "not a PyTorch checkpoint" not in str(info.value)


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    source = _randomise_bn(timm.create_model("cifar_resnet20"))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = load_checkpoint(timm.create_model("cifar_resnet20"), path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))


# -- what older PyTorch releases saved: accepted where PyTorch accepts it --------------------
def test_community_resnet56_saved_before_batchnorm_counted_batches_loads(tmp_path):
    """The community CIFAR ResNet-56 layout ({"state_dict": {"module.…"}}) as published by a
    PyTorch release whose BatchNorm had no ``num_batches_tracked``: PyTorch fills the counter in."""
    community = _randomise_bn(_CommunityResNet(n=9))
    state = {f"module.{k}": v for k, v in community.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(community.state_dict())
    path = tmp_path / "resnet56-4bfd9763.th"
    torch.save({"best_prec1": 93.39, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    model = load_checkpoint(timm.create_model("cifar_resnet56"), path).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), community(x))
    counters = [m.num_batches_tracked.item() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(counters) == 55 and set(counters) == {0}


class _WeightNormNet(nn.Module):
    def __init__(self, new_api):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        norm = nn.utils.parametrizations.weight_norm if new_api else nn.utils.weight_norm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated
            self.fc = norm(self.fc)

    def forward(self, x):
        return self.fc(x)


def test_weight_norm_of_older_releases_loads_into_the_parametrized_one(tmp_path):
    """``weight_g``/``weight_v`` (torch.nn.utils.weight_norm) into a model that uses
    ``torch.nn.utils.parametrizations.weight_norm``: PyTorch renames them when loading."""
    old = _WeightNormNet(new_api=False)
    path = tmp_path / "wn.pth"
    torch.save(old.state_dict(), path)
    assert {"fc.weight_g", "fc.weight_v"} <= set(torch.load(path, weights_only=True))
    new = load_checkpoint(_WeightNormNet(new_api=True), path)
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))


def test_a_missing_weight_is_still_an_error_and_the_model_is_unchanged(tmp_path):
    source = timm.create_model("cifar_resnet56")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    del state["layer2.4.conv1.weight"]
    path = tmp_path / "r56.pth"
    torch.save(state, path)
    model = timm.create_model("cifar_resnet56")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"does not fit CifarResNet: 1 missing: layer2\.4\.conv1\.weight$"):
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_checkpoint(timm.create_model("cifar_resnet20"), path)
