"""What every surgery test of a new kind of removal checks on the pruned model."""

import json

import pytest
import torch

from layerprune import load_pruned
from layerprune.surgery import PruneSpec, save_pruned


@pytest.fixture
def saved_traced_exported(tmp_path):
    """``check(pruned, model_name, model_kwargs, x, stand_ins)``: the pruned model saved and loaded
    again gives its outputs, its config records ``stand_ins`` (and lists them as removed), and
    ``torch.jit.trace`` and ``torch.export`` give its outputs too."""

    def check(pruned, name, kwargs, x, stand_ins):
        with torch.no_grad():
            ref = pruned.eval()(x)
        assert torch.isfinite(ref).all()
        save_pruned(pruned, PruneSpec.for_model(pruned, name, kwargs), tmp_path / "pruned")
        config = json.loads((tmp_path / "pruned" / "config.json").read_text())["layerprune"]
        assert config["stand_ins"] == stand_ins and set(stand_ins) <= set(config["removed"])
        with torch.no_grad():
            assert torch.allclose(load_pruned(tmp_path / "pruned")(x), ref, atol=1e-5)
            assert torch.allclose(torch.jit.trace(pruned, x, check_trace=False)(x), ref, atol=1e-5)
            assert torch.allclose(torch.export.export(pruned, (x,)).module()(x), ref, atol=1e-5)
        return ref

    return check
