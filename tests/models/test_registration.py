"""The CIFAR models are real timm models: listed, created by name, configured the timm way."""

import copy
import pickle

import pytest
import timm
import torch
import torch_pruning as tp

import layerprune  # noqa: F401  (registers the models)
from layerprune.errors import ModelError, UnknownNameError

CIFAR_MODELS = [
    "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
    "cifar_vgg11_bn", "cifar_vgg13_bn", "cifar_vgg16_bn", "cifar_vgg19_bn",
]


def test_list_models_wildcard_lists_exactly_the_cifar_models():
    assert sorted(timm.list_models("cifar_*")) == sorted(CIFAR_MODELS)
    assert timm.list_models("cifar_resnet*") == [m for m in CIFAR_MODELS if "resnet" in m]


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_on_32x32_gives_logits(name):
    model = timm.create_model(name, num_classes=100).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11_bn"])
def test_in_chans_one_accepts_grayscale(name):
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11_bn"])
def test_timm_head_api(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier() is model.linear
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ["cifar_resnet56", "cifar_vgg16_bn"])
def test_pretrained_cfg_describes_cifar_input(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["architecture"] == name
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 32, 32)


def test_features_only_returns_stage_outputs():
    model = timm.create_model("cifar_resnet20", features_only=True).eval()
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape[1:] for f in feats] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_pretrained_without_a_file_explains_how_to_load_weights():
    with pytest.raises(ModelError, match=r"cifar_resnet56: no published weights.*load_checkpoint"):
        timm.create_model("cifar_resnet56", pretrained=True)


def test_pretrained_with_a_local_file_loads_it(tmp_path):
    source = timm.create_model("cifar_resnet20").eval()
    path = tmp_path / "r20.pth"
    torch.save(source.state_dict(), path)
    model = timm.create_model("cifar_resnet20", pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11_bn"])
def test_models_deepcopy_pickle_fx_trace_and_build_a_dependency_graph(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), expected)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), expected)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    assert len(graph.module2node) > 0


def test_create_model_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'cifar_resnet56'"):
        layerprune.create_model("cifar_resnet65")


def test_list_models_unknown_exact_name_and_empty_wildcard():
    with pytest.raises(UnknownNameError, match="unknown model 'cifar_vgg16'"):
        layerprune.list_models("cifar_vgg16")
    with pytest.raises(UnknownNameError, match="no model matches 'zzz_\\*'"):
        layerprune.list_models("zzz_*")


def test_vgg_features_only_returns_five_stage_outputs():
    model = timm.create_model("cifar_vgg11_bn", features_only=True).eval()
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape[1:] for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]


def test_reset_classifier_keeps_or_changes_pooling():
    model = timm.create_model("cifar_resnet20", global_pool="max")
    model.reset_classifier(3)
    assert model.global_pool.pool_type == "max"
    model.reset_classifier(3, global_pool="avg")
    assert model.global_pool.pool_type == "avg"


def test_create_model_bad_kwargs_is_a_model_error():
    with pytest.raises(ModelError, match="cifar_resnet20: .*unexpected keyword argument 'bogus'"):
        layerprune.create_model("cifar_resnet20", bogus=1)


@pytest.mark.parametrize("first", [
    "",                                                        # timm imported after layerprune
    "import importlib.util; importlib.util.find_spec('timm')",  # only looked up first (as transformers does)
    "import transformers",                                      # a library that checks what is installed
])
def test_the_models_are_registered_whatever_looks_timm_up_first(first):
    """In a fresh process: layerprune, then something that may look timm up without importing it,
    then timm itself: the CIFAR models are registered, and the import hook is gone once used."""
    import subprocess
    import sys

    if "transformers" in first:
        pytest.importorskip("transformers", reason="needs the [hf] extra")
    code = (f"import sys, layerprune\n{first}\nimport timm\n"
            "print(timm.is_model('cifar_resnet56'), any(type(f).__name__ == '_RegisterWithTimm' for f in sys.meta_path))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "False"]
