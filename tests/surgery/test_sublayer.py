"""``find_blocks(..., level="sublayer")``: the residual branches inside blocks as removable units —
timm ViT's attention and MLP (written inline in ``Block.forward``), the residual pieces of an
EfficientViT block — removed, traced, exported, saved and scored like blocks."""

import json

import pytest
import timm
import torch
import torch.nn as nn

from layerprune import build_dataset, find_blocks, get_criterion, remove_blocks
from layerprune.criteria import ScoringContext
from layerprune.errors import SurgeryError
from layerprune.surgery.edit import Zeros

VIT_ARGS = {"num_classes": 10, "in_chans": 1, "img_size": 32}
ATTN_6_11 = [f"blocks.{i}.attn" for i in range(6, 12)]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **VIT_ARGS).eval()
    x = torch.randn(2, 1, 32, 32)
    return model, x, find_blocks(model, x, level="sublayer")


def test_vit_offers_attention_and_mlp_of_every_block(vit):
    model, x, blocks = vit
    units = [b for b in blocks if b.stage]
    assert [b.name for b in units] == [f"blocks.{i}.{part}" for i in range(12) for part in ("attn", "mlp")]
    assert all(b.removable and b.stand_in == "zeros" for b in units)
    # the stream around each branch: the block's input, the input of norm2, the block's output
    assert units[0].stream == ("blocks.0:in", "blocks.0.norm2:in")
    assert units[1].stream == ("blocks.0.norm2:in", "blocks.0:out")
    # the block level is unchanged
    assert [b.name for b in find_blocks(model, x) if b.stage] == [f"blocks.{i}" for i in range(12)]


def test_removing_attention_of_blocks_6_to_11_runs_traces_saves_and_exports(vit, saved_traced_exported):
    model, x, blocks = vit
    pruned = remove_blocks(model, ATTN_6_11, x, blocks=blocks)
    assert all(isinstance(pruned.get_submodule(n), Zeros) for n in ATTN_6_11)
    attn_params = sum(p.numel() for n in ATTN_6_11 for p in model.get_submodule(n).parameters())
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) == attn_params
    with torch.no_grad():
        # each block 6–11 is now x + mlp(norm2(x)): its attention adds nothing
        blk = pruned.blocks[6]
        h = torch.randn(2, 5, 192)
        assert torch.allclose(blk(h), h + blk.ls2(blk.mlp(blk.norm2(h))), atol=1e-6)
    saved_traced_exported(pruned, "vit_tiny_patch16_224", VIT_ARGS, x, {n: "zeros" for n in ATTN_6_11})


def test_sublayers_are_scored_on_the_stream_around_them(vit):
    model, _, blocks = vit
    ctx = ScoringContext(model, build_dataset("digits", seed=0), blocks=blocks, samples=32, batches=1)
    assert len(ctx.scorable) == 24
    # neighbouring sub-layers share a probe: attn's after is mlp's before
    assert ctx.block_probes["blocks.3.attn"][1] == ctx.block_probes["blocks.3.mlp"][0]
    for name in ("modularity", "taylor", "ablation"):
        scores = get_criterion(name)(ctx).scores
        assert len(scores) >= 23 and all(torch.isfinite(torch.tensor(v)) for v in scores.values())


def test_efficientvit_blocks_split_into_their_residual_pieces():
    torch.manual_seed(0)
    model = timm.create_model("efficientvit_m0", num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(model, x, level="sublayer")
    first = [b.name for b in blocks if b.name.startswith("stages.0.blocks.0.")]
    assert first == [f"stages.0.blocks.0.{p}" for p in ("dw0", "ffn0", "mixer", "dw1", "ffn1")]
    pruned = remove_blocks(model, ["stages.0.blocks.0.mixer", "stages.1.blocks.0.ffn0"], x, blocks=blocks)
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)


class _Bottleneck(nn.Module):
    """One residual path of single layers: nothing inside to split."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.norm(self.fc1(x))))


class _ChainOfModules(nn.Module):
    """One residual branch made of two modules of modules in a row (a bottleneck of ConvNormAct
    pieces): zeroing both gives the identity, but each is a piece of the chain, not a branch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a, self.b = _Mlp(dim), _Mlp(dim)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class _Parallel(nn.Module):
    """Two branches side by side, summed: both read the block's own input and output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.a, self.b = nn.LayerNorm(dim), _Mlp(dim), _Mlp(dim)

    def forward(self, x):
        h = self.norm(x)
        return x + self.a(h) + self.b(h)


def test_blocks_without_two_branches_stay_whole_and_side_by_side_branches_share_the_stream():
    """A chain of single layers and a chain of two modules of modules are one branch each: their
    blocks stay whole. Two branches side by side are sub-layers, read on the block's own stream."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(_Bottleneck(8), _Parallel(8), _ChainOfModules(8)),
                          nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    units = {b.name: b for b in find_blocks(model, x, level="sublayer") if b.stage}
    assert list(units) == ["1.0", "1.1.a", "1.1.b", "1.2"]
    assert units["1.1.a"].stream == units["1.1.b"].stream == ("1.1:in", "1.1:out")


def test_unknown_level_is_a_clear_error(vit):
    model, x, _ = vit
    with pytest.raises(SurgeryError, match="level must be one of 'block', 'sublayer', got 'layer'"):
        find_blocks(model, x, level="layer")


def test_a_recipe_at_sublayer_level_removes_branches_end_to_end(tmp_path):
    """``select.level: sublayer`` reaches scoring, selection, surgery and the saved model."""
    from pathlib import Path

    from typer.testing import CliRunner

    from layerprune.cli import app

    quickstart = Path(__file__).resolve().parents[2] / "recipes/quickstart.yaml"
    out = tmp_path / "vit"
    sets = ["model.name=vit_tiny_patch16_224", "model.kwargs={img_size: 32, depth: 4}", "select.level=sublayer",
            "criterion.name=taylor", "criterion.params={}", "select.rule=count", "select.params={k: 3}",
            "pretrain.epochs=1", "finetune.epochs=0", "data.calibration.samples=32", "data.calibration.batches=1",
            "prune.repair=false", "eval.latency=false"]
    result = CliRunner().invoke(app, ["run", str(quickstart), "--out", str(out), *sum((["--set", s] for s in sets), [])])
    assert result.exit_code == 0, result.output
    removed = json.loads((out / "prune.json").read_text())["removed"]
    assert len(removed) == 3 and all(n.rsplit(".", 1)[1] in ("attn", "mlp") for n in removed)
    config = json.loads((out / "model/config.json").read_text())
    assert config["layerprune"]["stand_ins"] == {n: "zeros" for n in removed}

    bad = CliRunner().invoke(app, ["validate", str(quickstart), "--set", "select.level=layer"])
    assert bad.exit_code == 2 and "select.level" in bad.output
