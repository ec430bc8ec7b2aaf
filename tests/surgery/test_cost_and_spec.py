import json

import pytest
import timm
import torch

import layerprune  # noqa: F401
from layerprune.errors import SurgeryError
from layerprune.surgery import PruneSpec, apply_spec, measure_latency, model_cost, remove_blocks


def test_resnet56_macs_match_the_usual_figure_and_drop_after_pruning():
    model = timm.create_model("cifar_resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    base = model_cost(model, x)
    assert base.params == 853_018
    # Pruning papers quote ~125M "FLOPs" (MACs of convs and the classifier); Torch-Pruning's
    # counter also counts BN, ReLU and pooling, which adds about 1.5%.
    assert 125e6 < base.macs < 128e6
    pruned = remove_blocks(model, ["layer1.1", "layer1.2"], x)
    cost = model_cost(pruned, x)
    # Each stage-1 block: two 16→16 3×3 convs on 32×32 maps, plus BN.
    per_block = 2 * (16 * 16 * 9 * 32 * 32)
    assert base.macs - cost.macs >= 2 * per_block


def test_macs_are_per_sample_whatever_the_batch():
    model = timm.create_model("cifar_resnet20").eval()
    one = model_cost(model, torch.randn(1, 3, 32, 32)).macs
    assert model_cost(model, torch.randn(4, 3, 32, 32)).macs == pytest.approx(one, rel=1e-6)


def test_latency_is_measured_for_the_asked_batch_and_keeps_train_mode():
    model = timm.create_model("cifar_resnet20").train()
    lat = measure_latency(model, (3, 32, 32), batch_size=4, warmup=1, repeats=3)
    assert lat.batch_size == 4 and lat.repeats == 3 and lat.device == "cpu"
    assert 0 < lat.min_ms <= lat.median_ms
    assert lat.images_per_s == pytest.approx(4000 / lat.median_ms)
    assert model.training


def test_spec_json_round_trip_and_apply_to_a_fresh_model(tmp_path):
    model = timm.create_model("cifar_resnet20", shortcut="B").eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = remove_blocks(model, ["layer1.0", "layer3.0"], x, collapse=True)
    spec = PruneSpec.for_model(pruned, "cifar_resnet20", {"shortcut": "B"})
    spec.save(tmp_path / "spec.json")
    data = json.loads((tmp_path / "spec.json").read_text())
    assert data["removed"] == ["layer1.0"] and data["collapsed"] == {"layer3.0": ["shortcut", "act2"]}
    assert data["versions"]["timm"] == timm.__version__
    loaded = PruneSpec.load(tmp_path / "spec.json")
    fresh = apply_spec(timm.create_model("cifar_resnet20", shortcut="B"), loaded)
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh.eval()(x), pruned(x))


def test_bad_specs_are_one_line_errors(tmp_path):
    with pytest.raises(SurgeryError, match="prune spec not found"):
        PruneSpec.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SurgeryError, match="not valid JSON"):
        PruneSpec.load(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text(json.dumps({"model": "cifar_resnet20", "colour": "red"}))
    with pytest.raises(SurgeryError, match="unknown key 'colour'"):
        PruneSpec.load(tmp_path / "extra.json")
    with pytest.raises(SurgeryError, match="was not pruned by layerprune"):
        PruneSpec.for_model(timm.create_model("cifar_resnet20"), "cifar_resnet20")


def test_applying_a_spec_to_the_wrong_model_names_the_block():
    spec = PruneSpec(model="cifar_resnet56", removed=["layer1.8"])
    with pytest.raises(SurgeryError, match="block 'layer1.8' does not exist"):
        apply_spec(timm.create_model("cifar_resnet20"), spec)


def test_save_pruned_replaces_an_earlier_save_only_when_complete(tmp_path):
    from layerprune.surgery import load_pruned, save_pruned

    model = timm.create_model("cifar_resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    first = remove_blocks(model, ["layer1.1"], x)
    save_pruned(first, PruneSpec.for_model(first, "cifar_resnet20"), tmp_path / "out")
    second = remove_blocks(model, ["layer1.1", "layer2.2"], x)
    save_pruned(second, PruneSpec.for_model(second, "cifar_resnet20"), tmp_path / "out")
    assert PruneSpec.load(tmp_path / "out").removed == ["layer1.1", "layer2.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left
    torch.testing.assert_close(load_pruned(tmp_path / "out")(x), second.eval()(x))
