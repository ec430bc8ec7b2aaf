"""find_blocks / remove_blocks on real timm models (random init, no downloads)."""

import copy

import pytest
import timm
import torch

import layerprune  # noqa: F401  (registers the CIFAR models)
from layerprune.surgery import PruneSpec, find_blocks, load_pruned, remove_blocks, save_pruned
from layerprune.surgery.named import coverage, named_blocks

# model, kwargs, input side, identity/plain-removable count, collapsible count
MODELS = [
    ("cifar_resnet20", {}, 32, 7, 2),
    ("cifar_resnet56", {}, 32, 25, 2),
    ("cifar_resnet56", {"shortcut": "B"}, 32, 25, 2),
    ("cifar_vgg16_bn", {}, 32, 9, 3),
    ("resnet18", {}, 64, 5, 3),
    ("resnet50", {}, 64, 12, 4),
    ("convnext_atto", {}, 64, 12, 0),
    ("vit_tiny_patch16_224", {}, 224, 12, 0),
    ("mobilenetv3_small_100", {}, 64, 6, 4),
    ("efficientnet_b0", {}, 64, 9, 5),
    ("regnetx_002", {}, 64, 9, 4),
]
IDS = [f"{m}{'-' + '-'.join(f'{k}{v}' for k, v in kw.items()) if kw else ''}" for m, kw, *_ in MODELS]


def _setup(name, kwargs, side):
    model = timm.create_model(name, **kwargs).eval()
    return model, torch.randn(2, 3, side, side)


def _every_other(blocks, collapse=False):
    """Every other removable block, never all blocks of a stage."""
    chosen = [b for b in blocks if b.can_remove(collapse)][::2]
    for stage in {b.stage for b in chosen}:
        members = [b.name for b in blocks if b.stage == stage]
        if all(m in {c.name for c in chosen} for m in members):
            chosen = [c for c in chosen if c.name != members[0]]
    return chosen


def _zero_branches(model, chosen):
    """The original model with the chosen blocks' residual branches zeroed: what removing
    residual blocks must be equivalent to."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for block in chosen:
            module = ref.get_submodule(block.name)
            kept = {id(p) for n in block.collapse_to for p in module.get_submodule(n).parameters()}
            for p in module.parameters():
                if id(p) not in kept:
                    p.zero_()
    return ref


@pytest.mark.parametrize("name, kwargs, side, n_removable, n_collapse", MODELS, ids=IDS)
def test_removable_blocks_are_found(name, kwargs, side, n_removable, n_collapse):
    model, x = _setup(name, kwargs, side)
    blocks = find_blocks(model, x)
    assert sum(b.removable for b in blocks) == n_removable
    assert sum(b.collapsible for b in blocks) == n_collapse
    for b in blocks:
        assert b.reason
        if b.removable:
            assert b.in_shape == b.out_shape and b.stage
    assert sum(b.params for b in blocks) <= sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kwargs, side, n_removable, n_collapse", MODELS, ids=IDS)
def test_removal_is_forward_correct_drops_exact_params_and_round_trips(tmp_path, name, kwargs, side,
                                                                       n_removable, n_collapse):
    model, x = _setup(name, kwargs, side)
    blocks = find_blocks(model, x)
    collapse = n_collapse > 0
    chosen = _every_other(blocks, collapse=collapse)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    pruned = remove_blocks(model, [b.name for b in chosen], x, collapse=collapse, blocks=blocks)

    # The input model is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(model.state_dict()) == len(before)
    # Parameters drop by exactly what the removed blocks held (minus kept shortcuts).
    kept = sum(p.numel() for b in chosen for n in b.collapse_to for p in model.get_submodule(b.name).get_submodule(n).parameters())
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) \
        == sum(b.params for b in chosen) - kept
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == model(x).shape and torch.isfinite(out).all()
        # exact where the block with its branch zeroed is what stands in: not for plain blocks, nor
        # for a collapse to a shortcut without parameters (the block had none)
        assert all(b.stand_in.startswith("shortcut:") for b in chosen if b.kind == "collapse" and not b.collapse_to)
        if all(b.kind == "identity" or b.collapse_to for b in chosen):
            torch.testing.assert_close(out, _zero_branches(model, chosen)(x), rtol=1e-4, atol=1e-4)

    spec = PruneSpec.for_model(pruned, name, kwargs, input_size=[3, side, side])
    assert sorted(spec.removed + list(spec.collapsed)) == sorted(b.name for b in chosen)
    save_pruned(pruned, spec, tmp_path / "pruned")
    rebuilt = load_pruned(tmp_path / "pruned")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned.eval()(x))


def test_dense_layers_are_removable_as_zeros_of_their_output(saved_traced_exported):
    # A dense block feeds every layer the list of all earlier outputs and concatenates what each
    # returns. timm names the dense layers as its blocks (features.denseblockN.denselayerM); with
    # its parameters zeroed a layer adds zero channels, so it is removed as exactly that: zeros of
    # its output's shape, and the concatenation keeps its width.
    model = timm.create_model("densenet121").eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(model, x)
    layers = [b for b in blocks if ".denselayer" in b.name]
    assert len(layers) == 6 + 12 + 24 + 16
    assert all(b.stage == b.name.rpartition(".")[0] and "dense concatenation" in b.reason for b in layers)
    assert all(b.kind == "identity" and b.stand_in == "zeros:32" for b in layers)
    assert sum(b.removable for b in layers) == 58  # every stage has more than one layer
    cov = coverage(blocks, named_blocks(model, [n for n, _ in model.named_modules() if n]))
    assert (cov.named, cov.listed, cov.removable, cov.expected) == (58, 58, 58, 54) and cov.complete

    chosen = [b for b in layers if b.name.endswith(("denselayer2", "denselayer5"))]
    pruned = remove_blocks(model, [b.name for b in chosen], x, blocks=blocks)
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) \
        == sum(b.params for b in chosen)
    with torch.no_grad():  # exactly the model with those layers' parameters zeroed
        torch.testing.assert_close(pruned(x), _zero_branches(model, chosen)(x), rtol=1e-4, atol=1e-4)
    assert type(pruned.get_submodule(chosen[0].name)).__name__ == "Zeros"
    saved_traced_exported(pruned, "densenet121", {}, x, {b.name: "zeros:32" for b in chosen})


def test_dual_path_blocks_pass_their_input_and_zero_channels(saved_traced_exported):
    # DPN's blocks return their input with new (dense-path) channels appended; with the branch
    # zeroed the new channels are zeros, so the stand-in pads the input with that many zeros.
    # The first block of each stage projects its input: it can only collapse (strided and
    # zero-padded) where Torch-Pruning can still trace the model, and never by default.
    model = timm.create_model("dpn48b").eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = {b.name: b for b in find_blocks(model, x)}
    b = blocks["features.conv3_2"]
    assert b.kind == "identity" and b.removable and b.stand_in == f"shortcut:{b.out_shape[1]}"
    assert b.out_shape[1] > b.in_shape[1]
    firsts = [blocks[f"features.conv{i}_1"] for i in (2, 3, 4, 5)]
    assert not any(f.removable for f in firsts)
    assert all(f.collapsible == (not f.reason.startswith("model fails without it")) for f in firsts)
    names = ["features.conv2_2", "features.conv3_2", "features.conv4_3", "features.conv5_2"]
    pruned = remove_blocks(model, names, x, blocks=list(blocks.values()))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _zero_branches(model, [blocks[n] for n in names])(x),
                                   rtol=1e-4, atol=1e-4)
    saved_traced_exported(pruned, "dpn48b", {}, x, {n: blocks[n].stand_in for n in names})


def test_cifar_resnet56_block_facts():
    model = timm.create_model("cifar_resnet56").eval()
    blocks = {b.name: b for b in find_blocks(model, torch.randn(1, 3, 32, 32))}
    assert blocks["conv1"].reason.startswith("stem") and blocks["linear"].reason.startswith("head")
    assert blocks["layer1.0"].kind == "identity"
    assert blocks["layer2.0"].kind == "collapse" and blocks["layer2.0"].collapse_to == ("shortcut",)
    assert blocks["layer3.8"].in_shape == (1, 64, 8, 8)
    # Every conv is inside a listed part, so MACs shares of the parts add up to ~1 (pooling aside).
    assert 0.99 < sum(b.macs_share for b in blocks.values()) <= 1.0 + 1e-9
    # Blocks of one stage have equal cost: 9 stage-1 blocks, each 2 × (16·16·9) · 32·32 MACs plus BN.
    assert blocks["layer1.3"].macs == blocks["layer1.7"].macs >= 2 * 16 * 16 * 9 * 32 * 32


def test_option_b_collapse_keeps_the_final_relu():
    model = timm.create_model("cifar_resnet56", shortcut="B").eval()
    blocks = {b.name: b for b in find_blocks(model, torch.randn(1, 3, 32, 32))}
    assert blocks["layer2.0"].collapse_to == ("shortcut", "act2")


def test_train_mode_is_restored():
    model = timm.create_model("cifar_resnet20").train()
    x = torch.randn(2, 3, 32, 32)
    find_blocks(model, x)
    assert model.training
    pruned = remove_blocks(model, ["layer1.1"], x)
    assert model.training and pruned.training


def test_pruned_keys_are_a_subset_of_the_original_keys():
    model = timm.create_model("cifar_resnet56", shortcut="B").eval()
    pruned = remove_blocks(model, ["layer1.2", "layer2.0"], torch.randn(1, 3, 32, 32), collapse=True)
    assert set(pruned.state_dict()) < set(model.state_dict())


def test_find_blocks_leaves_the_garbage_collector_as_it_was():
    # paused while blocks are found (a full collection among the checks walks the whole process),
    # then back as it was, also when the search fails
    import gc

    from layerprune.errors import SurgeryError

    model = timm.create_model("cifar_resnet20").eval()
    assert gc.isenabled()
    find_blocks(model, torch.randn(1, 3, 32, 32))
    assert gc.isenabled()
    with pytest.raises(SurgeryError, match="forward pass failed"):
        find_blocks(model, torch.randn(1, 5, 32, 32))
    assert gc.isenabled()
    gc.disable()
    try:
        find_blocks(model, torch.randn(1, 3, 32, 32))
        assert not gc.isenabled()
    finally:
        gc.enable()
