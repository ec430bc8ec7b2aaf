"""The tests' cache of trained models (see conftest.py): the key of the code that decides them,
and training once per key."""

import hashlib
import inspect
import os
from pathlib import Path
from typing import Callable

import torch


def code_key() -> str:
    """A digest of what decides a trained model besides its own recipe: layerprune's sources,
    torch's and timm's versions and the thread count (CPU reductions depend on it)."""
    import timm

    import layerprune

    package = Path(layerprune.__file__).parent
    digest = hashlib.sha256(f"{torch.__version__}|{timm.__version__}|{torch.get_num_threads()}".encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_training(root: Path, build: Callable[[], torch.nn.Module],
                    train: Callable[[torch.nn.Module], None]) -> torch.nn.Module:
    """``build()`` (from seed 0) trained by ``train``, in eval mode: loaded from ``root`` when
    the same code (``root``'s key, the two functions' source) trained it before, else trained and
    saved there (atomically)."""
    key = hashlib.sha256((inspect.getsource(build) + inspect.getsource(train)).encode()).hexdigest()[:16]
    path = root / "fixtures" / f"{build.__name__}-{key}.pt"
    torch.manual_seed(0)
    model = build()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    return model.eval()
