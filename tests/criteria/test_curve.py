import numpy as np
import pytest
import torch

from layerprune import get_criterion, modularity, modularity_curve
from layerprune.criteria import ScoringContext
from layerprune.errors import LayerpruneError


def test_curve_has_mean_and_std_over_batches_at_every_probe(trained_resnet20, digits):
    curve = modularity_curve(trained_resnet20, digits, samples=60, batches=3)
    assert curve.values.shape == (3, 10)
    assert curve.probes[0] == "stem" and curve.probes[-1] == "layer3.2"
    assert np.allclose(curve.mean, curve.values.mean(0)) and (curve.std > 0).all()
    assert curve.k == 3 and curve.samples == 60


def test_curve_values_are_modularity_of_the_probe_features(trained_resnet20, digits):
    curve = modularity_curve(trained_resnet20, digits, samples=80, batches=1, k=4)
    x, y = ScoringContext(trained_resnet20, digits, samples=80, batches=1).batch(0)
    feats = {}
    handle = trained_resnet20.layer3[2].register_forward_hook(lambda m, a, out: feats.setdefault("y", out))
    with torch.no_grad():
        trained_resnet20(x)
    handle.remove()
    assert curve.q("layer3.2") == pytest.approx(modularity(feats["y"], y, k=4), abs=1e-9)


def test_trained_network_separates_classes_more_at_the_end(trained_resnet20, digits):
    from layerprune import create_model

    curve = modularity_curve(trained_resnet20, digits, samples=150, batches=2)
    end, stem = curve.probes.index("layer3.2"), curve.probes.index("stem")
    noise = 3 * (curve.std[end] + curve.std[stem])
    assert curve.mean[end] > curve.mean[stem] + noise  # on digits the raw pixels already score ~0.8
    torch.manual_seed(0)
    untrained = create_model("cifar_resnet20", num_classes=10, in_chans=1).eval()
    before = modularity_curve(untrained, digits, samples=150, batches=2)
    assert curve.q("layer3.2") > before.q("layer3.2") + 0.02  # training is what raised the end of the curve


def test_block_score_is_delta_q_across_the_block(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=60, batches=2)
    result = get_criterion("modularity")(ctx)
    curve = result.diagnostics["curve"]
    for block, (before, after) in ctx.block_probes.items():
        assert result.scores[block] == pytest.approx(curve.q(after) - curve.q(before), abs=1e-12)


def test_custom_probes_measure_named_modules(trained_resnet20, digits):
    curve = modularity_curve(trained_resnet20, digits, samples=40, batches=1, probes=["layer1", "layer3", "linear"])
    assert curve.probes == ["layer1", "layer3", "linear"] and curve.values.shape == (1, 3)
    with pytest.raises(LayerpruneError, match="'nope'"):
        modularity_curve(trained_resnet20, digits, samples=40, batches=1, probes=["nope"])


def test_default_rule_is_the_paper_threshold():
    criterion = get_criterion("modularity")
    assert criterion.default_rule == {"rule": "threshold", "threshold": 0.03}
    assert get_criterion("modularity", threshold=0.05).default_rule["threshold"] == 0.05
    with pytest.raises(LayerpruneError, match="k"):
        get_criterion("modularity", k=0)


def test_plot_writes_a_png_with_regions_and_removed_blocks(trained_resnet20, digits, tmp_path):
    curve = modularity_curve(trained_resnet20, digits, samples=40, batches=2)
    path = curve.plot(tmp_path / "curve.png", threshold=0.03, removed=["layer1.1", "layer3.2"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]  # no temporary left behind
