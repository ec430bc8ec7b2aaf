"""Pruned-model folders: config.json + model.safetensors + README.md, reloaded exactly; channel
edits recorded and redone; format-1 folders (spec.json + weights.pth) still load."""

import json

import pytest
import timm
import torch

from layerprune.surgery.width import prune_width
from layerprune.errors import SurgeryError
from layerprune.surgery import PruneSpec, load_pruned, remove_blocks, save_pruned


def _digits_batch(digits, n=16):
    return torch.stack([digits.test[i][0] for i in range(n)])


def test_a_saved_folder_holds_config_safetensors_and_card_and_reloads_exactly(trained_resnet20, digits, tmp_path):
    x = _digits_batch(digits)
    pruned = remove_blocks(trained_resnet20, ["layer1.1", "layer3.2"], x)
    save_pruned(pruned, PruneSpec.for_model(pruned, "cifar_resnet20", {"num_classes": 10, "in_chans": 1}), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "cifar_resnet20" and config["model_args"] == {"num_classes": 10, "in_chans": 1}
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]  # filled in from the model when not given
    assert config["layerprune"]["removed"] == ["layer1.1", "layer3.2"]
    from safetensors.torch import load_file  # plain tensors, no pickle

    assert set(load_file(tmp_path / "m" / "model.safetensors")) == set(pruned.state_dict())
    torch.testing.assert_close(load_pruned(tmp_path / "m")(x), pruned.eval()(x), rtol=0, atol=0)


def test_the_card_written_outside_a_run_holds_architecture_edits_params_and_macs(trained_resnet20, tmp_path):
    from layerprune.surgery import model_cost

    x = torch.randn(1, 1, 32, 32)
    pruned = remove_blocks(trained_resnet20, ["layer2.1"], x)
    save_pruned(pruned, PruneSpec.for_model(pruned, "cifar_resnet20", input_size=(1, 32, 32)), tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    cost = model_cost(pruned, x)
    assert card.startswith("---\nlibrary_name: timm\n") and "# cifar_resnet20, pruned by layerprune" in card
    assert "1 block removed" in card and "`layer2.1`" in card
    assert f"{cost.params:,}" in card and f"{cost.macs / 1e6:.2f}M" in card
    assert "accuracy" not in card  # it says nothing it did not measure


def test_depth_then_width_pruned_model_reloads_with_its_channel_edits(trained_resnet20, digits, tmp_path):
    x = _digits_batch(digits)
    depth = remove_blocks(trained_resnet20, ["layer1.2"], x)
    both, _ = prune_width(depth, x[:1], macs=0.3)
    spec = PruneSpec.for_model(both, "cifar_resnet20", {"num_classes": 10, "in_chans": 1}, input_size=(1, 32, 32))
    assert spec.removed == ["layer1.2"] and spec.channels
    save_pruned(both, spec, tmp_path / "m")
    again = load_pruned(tmp_path / "m")
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in both.parameters())
    torch.testing.assert_close(again(x), both.eval()(x), rtol=0, atol=0)
    assert "channels pruned in" in (tmp_path / "m" / "README.md").read_text()


def test_a_format_1_folder_still_loads(trained_resnet20, digits, tmp_path):
    x = _digits_batch(digits)
    pruned = remove_blocks(trained_resnet20, ["layer2.2"], x)
    old = tmp_path / "old"
    old.mkdir()  # what save_pruned wrote before format 2: spec.json + a pickled-tensor state dict
    spec = PruneSpec.for_model(pruned, "cifar_resnet20", {"num_classes": 10, "in_chans": 1})
    data = {k: v for k, v in spec.to_dict().items() if k != "channels"}
    (old / "spec.json").write_text(json.dumps({**data, "format": 1}))
    torch.save(pruned.state_dict(), old / "weights.pth")
    assert PruneSpec.load(old).removed == ["layer2.2"]
    torch.testing.assert_close(load_pruned(old)(x), pruned.eval()(x), rtol=0, atol=0)


def test_damaged_folders_are_one_line_errors(trained_resnet20, tmp_path):
    x = torch.randn(1, 1, 32, 32)
    pruned = remove_blocks(trained_resnet20, ["layer2.2"], x)
    save_pruned(pruned, PruneSpec.for_model(pruned, "cifar_resnet20", {"num_classes": 10, "in_chans": 1}), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(SurgeryError, match="not a readable safetensors file"):
        load_pruned(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(SurgeryError, match="weights not found"):
        load_pruned(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architecture": "cifar_resnet20"}))
    with pytest.raises(SurgeryError, match="not written by layerprune"):
        load_pruned(tmp_path / "m")
