import pytest
import torch

from layerprune import create_model
from layerprune.criteria import ScoringContext
from layerprune import Calibration, Repair
from layerprune.calibration import draw_batches
from layerprune.errors import DatasetError, LayerpruneError


def test_resnet_probes_are_the_stem_then_every_block_output(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=32, batches=1)
    names = [p.name for p in ctx.probes]
    assert names == ["stem"] + [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert ctx.block_probes["layer1.0"] == ("stem", "layer1.0")
    assert ctx.block_probes["layer2.0"] == ("layer1.2", "layer2.0")  # neighbours share a probe
    assert ctx.probes[0].shape == (16, 32, 32) and ctx.probes[-1].shape == (64, 8, 8)


def test_vgg_probes_include_pooled_inputs_between_stages(digits):
    model = create_model("cifar_vgg11_bn", num_classes=10, in_chans=1).eval()
    ctx = ScoringContext(model, digits, samples=16, batches=1)
    assert ctx.block_probes["stages.0.0"] == ("input", "stages.0.0")  # a VGG has no stem
    assert ctx.block_probes["stages.1.0"] == ("stages.1.0:in", "stages.1.0")  # after the pool
    assert ctx.block_probes["stages.2.1"] == ("stages.2.0", "stages.2.1")


def test_features_at_a_probe_are_the_real_block_outputs(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=40, batches=1, micro_batch=16)
    x, _ = ctx.batch(0)
    captured = {}
    handle = trained_resnet20.layer2[1].register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    with torch.no_grad():
        trained_resnet20(x)
    handle.remove()
    stats, _ = ctx.feature_stats(probe={"copy": lambda f, y: f.clone()})
    assert torch.allclose(stats["copy"]["layer2.1"][0], captured["y"].flatten(1), atol=1e-5)


def test_a_small_memory_budget_gives_the_same_statistics_in_more_passes(trained_resnet20, digits):
    def stats(budget):
        ctx = ScoringContext(trained_resnet20, digits, samples=48, batches=2, memory_budget=budget)
        probe, block = ctx.feature_stats(probe={"mean": lambda f, y: float(f.mean())},
                                         block={"diff": lambda a, b, y: float((b - a).abs().sum()) if a.shape == b.shape else 0.0})
        return len(ctx.stream.passes), probe["mean"], block["diff"]

    groups_big, probe_big, block_big = stats(1 << 30)
    with pytest.warns(ResourceWarning, match="memory_budget"):
        groups_small, probe_small, block_small = stats(1)  # one block per group
    assert groups_big == 2 and groups_small == 2 * 9  # one pass per group and batch
    for small, big in ((probe_small, probe_big), (block_small, block_big)):
        assert small.keys() == big.keys()
        assert all(small[k] == pytest.approx(big[k], rel=1e-5) for k in big)


def test_statistics_are_cached_by_key(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1)
    calls = []
    fn = lambda f, y: calls.append(1) or 0.0  # noqa: E731
    ctx.feature_stats(probe={"s": fn})
    ctx.feature_stats(probe={"s": fn})
    assert len(calls) == len(ctx.probes)


def test_calibration_defaults_to_the_held_out_val_split(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=50, batches=2)
    assert ctx.dataset is digits.val and ctx.samples == 50 and ctx.num_batches == 2
    test_ctx = ScoringContext(trained_resnet20, digits, samples=50, batches=1, split="test")
    assert test_ctx.dataset is digits.test


def test_draws_are_disjoint_when_the_split_allows_and_seeded():
    batches = draw_batches(100, 20, 5, seed=0)
    assert len(torch.cat(batches).unique()) == 100
    assert all(torch.equal(a, b) for a, b in zip(batches, draw_batches(100, 20, 5, seed=0)))
    assert not torch.equal(batches[0], draw_batches(100, 20, 5, seed=1)[0])
    assert len(draw_batches(50, 20, 5, seed=0)) == 5  # overlapping draws
    (everything,) = draw_batches(30, 500, 5, seed=0)  # fewer samples than asked: one batch of all
    assert torch.equal(everything, torch.arange(30))


def test_tensor_pairs_work_as_calibration_data(trained_resnet20):
    x, y = torch.randn(20, 1, 32, 32), torch.randint(0, 10, (20,))
    ctx = ScoringContext(trained_resnet20, (x, y), samples=10, batches=2)
    assert ctx.batch(0)[0].shape == (10, 1, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "holdout"}, "split"), ({"samples": 0}, "samples"), ({"batches": 0}, "batches"),
])
def test_bad_calibration_settings_name_the_key(trained_resnet20, digits, kwargs, match):
    with pytest.raises(LayerpruneError, match=match):
        ScoringContext(trained_resnet20, digits, **kwargs)


def test_missing_val_split_is_a_dataset_error(trained_resnet20):
    from layerprune import build_dataset

    bundle = build_dataset("digits", val_fraction=0.0)
    with pytest.raises(DatasetError, match="val"):
        ScoringContext(trained_resnet20, bundle)


def test_repair_data_comes_from_the_training_split_without_augmentation(trained_resnet20, digits):
    ctx = ScoringContext(trained_resnet20, digits, samples=16, batches=1, repair=Repair(batches=2, batch_size=32))
    repair = ctx.repair_data()
    assert [len(y) for _, y in repair] == [32, 32]
    plain = digits.train.without_augmentation()
    x, y = repair[0]
    rows = [i for i in range(len(plain)) if torch.equal(plain[i][0], x[0])]
    assert rows and int(y[0]) == plain[rows[0]][1]  # an unaugmented training image, as it is


def test_calibration_object_and_keyword_overrides_agree(trained_resnet20, digits):
    by_object = ScoringContext(trained_resnet20, digits, calibration=Calibration(samples=30, batches=2, seed=3))
    by_keywords = ScoringContext(trained_resnet20, digits, samples=30, batches=2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(by_object.indices, by_keywords.indices))
    assert by_object.calibration == by_keywords.calibration == Calibration(samples=30, batches=2, seed=3)


def test_probe_statistics_alone_group_by_probe_and_read_each_probe_once(trained_resnet20, digits):
    per_probe = 64 * 16 * 32 * 32 * 4  # 64 samples of a first-stage probe
    ctx = ScoringContext(trained_resnet20, digits, samples=64, batches=1, memory_budget=2 * per_probe)
    # 16×32×32 floats per first-stage sample, half that in stage 2, a quarter in stage 3; a group's
    # budget also holds the probe its pass resumes from, unless its first probe (same size) takes
    # over that buffer: layer1.2 (stage 1) must be held beside layer2.0 and layer2.1
    groups = ctx.stream.groups(64, pairs=False)
    assert [len(g.probes) for g in groups] == [2, 2, 2, 4]
    assert [g.resumes_from.name if g.resumes_from else None for g in groups] == [
        None, "layer1.0", "layer1.2", "layer2.1"]
    stats, _ = ctx.feature_stats(probe={"n": lambda f, y: len(f)})
    reads = [name for p in ctx.stream.passes for name in p.probes]
    assert sorted(reads) == sorted(p.name for p in ctx.probes)
    assert all(v == [64] for v in stats["n"].values())


def test_passes_resume_from_the_previous_group_and_read_the_same_features(trained_resnet20, digits):
    def features(budget):
        ctx = ScoringContext(trained_resnet20, digits, samples=48, batches=1, memory_budget=budget)
        stats, _ = ctx.feature_stats(probe={"f": lambda f, y: f.clone()})
        return ctx.stream.passes, stats["f"]

    one_pass, expected = features(1 << 30)
    with pytest.warns(ResourceWarning):
        passes, got = features(1)  # a group per probe
    assert len(one_pass) == 1 and len(passes) == len(expected)
    assert passes[0].resumed_from is None
    assert [p.resumed_from for p in passes[1:]] == [p.probes[0] for p in passes[:-1]]
    for name in expected:
        assert torch.equal(got[name][0], expected[name][0]), name


def _unit():
    return torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())


def _features(model, digits, **kwargs):
    ctx = ScoringContext(model, digits, samples=20, batches=1, **kwargs)
    stats, _ = ctx.feature_stats(probe={"f": lambda f, y: f.clone()})
    return ctx, {name: values[0] for name, values in stats["f"].items()}


def test_a_skip_connection_past_the_last_probe_still_resumes(digits):
    class LateSkip(torch.nn.Module):
        """The stem's output is added back after every block: no probe reads anything after that
        add, so skipping the stem while resuming changes no feature."""

        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.blocks = torch.nn.Sequential(_unit(), _unit(), _unit())
            self.head = torch.nn.Linear(4, 10)

        def forward(self, x):
            s = self.stem(x)
            return self.head((self.blocks(s) + s).mean((2, 3)))

    model = LateSkip().eval()
    with pytest.warns(ResourceWarning):
        ctx, got = _features(model, digits, memory_budget=1)
    assert len(ctx.stream.passes) == len(ctx.probes) and all(p.resumed_from for p in ctx.stream.passes[1:])
    _, expected = _features(model, digits)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_a_forward_that_cannot_be_skipped_starts_from_the_image(digits):
    class EarlySkip(torch.nn.Module):
        """The second stage reads the stem's output as well as the first stage's: resuming there
        with the stem skipped would feed it zeros, so those passes must start from the image."""

        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.first = torch.nn.Sequential(_unit(), _unit())
            self.second = torch.nn.Sequential(_unit(), _unit())
            self.head = torch.nn.Linear(4, 10)

        def forward(self, x):
            s = self.stem(x)
            return self.head(self.second(self.first(s) + s).mean((2, 3)))

    model = EarlySkip().eval()
    with pytest.warns(ResourceWarning):
        ctx, got = _features(model, digits, memory_budget=1)
    resumed = {p.probes[0]: p.resumed_from for p in ctx.stream.passes}
    assert resumed["first.1"] == "first.0"  # inside the first stage, skipping is safe
    assert resumed["second.0:in"] is None  # across the skip it is not: this pass starts at the image
    assert resumed["second.0"] == "second.0:in"  # and the next resumes from what that pass read
    _, expected = _features(model, digits)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_repair_data_does_not_depend_on_the_global_random_state(trained_resnet20, digits):
    def draw():
        return ScoringContext(trained_resnet20, digits, samples=16, batches=1, repair=Repair(batches=1)).repair_data()[0][0]

    torch.manual_seed(1)
    a = draw()
    torch.manual_seed(2)
    assert torch.equal(a, draw())  # training images drawn with the repair's own seed
