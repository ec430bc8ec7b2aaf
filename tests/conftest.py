"""Shared fixtures: a fixed random state, real digits, a briefly trained ResNet-20 and an isolated
criterion catalog.

Trained models (these fixtures and the bench's base models) are kept across test sessions in
pytest's cache folder, under a key of everything that decides them: layerprune's sources, torch,
timm, the thread count, and the fixture's own build and training code. Any change trains afresh;
``pytest --cache-clear`` starts empty, ``-p no:cacheprovider`` keeps them for one session only.
"""

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

from layerprune import build_dataset, create_model
from layerprune.criteria import catalog
from layerprune.data import make_loader
from layerprune.train import fit

from trained_cache import cached_training, code_key


@pytest.fixture(autouse=True, scope="session")
def test_cache(request, tmp_path_factory) -> Path:
    """The tests' cache of trained models (``$LAYERPRUNE_CACHE`` for the bench's base models),
    never the user's: ``.pytest_cache/d/layerprune/KEY`` (:func:`code_key`; folders of other keys
    are removed), or a temporary folder without pytest's cache."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        root = tmp_path_factory.mktemp("cache")
    else:
        parent = Path(cache.mkdir("layerprune"))
        root = parent / code_key()
        for old in parent.iterdir():
            if old != root:
                shutil.rmtree(old, ignore_errors=True)
        root.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERPRUNE_CACHE", str(root))
        yield root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    return build_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def _trained_resnet20(digits, test_cache):
    def resnet20_digits():
        return create_model("cifar_resnet20", num_classes=10, in_chans=1)

    def train(model):
        fit(model, make_loader(digits.train, 128, shuffle=True, seed=0), epochs=3, lr=0.1)

    return cached_training(test_cache, resnet20_digits, train)


@pytest.fixture
def trained_resnet20(_trained_resnet20):
    """ResNet-20 trained 3 epochs on digits (~83% val accuracy); a fresh copy per test."""
    return copy.deepcopy(_trained_resnet20)


@pytest.fixture(scope="session")
def _trained_vit(digits, test_cache):
    import timm

    def vit_digits():
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=4,
                                 in_chans=1, num_classes=10)

    def train(model):
        fit(model, make_loader(digits.train, 64, shuffle=True, seed=0), epochs=3, lr=0.05)

    return cached_training(test_cache, vit_digits, train)


@pytest.fixture
def trained_vit(_trained_vit):
    """A 4-block ViT (timm's VisionTransformer, patches of 8 on 32×32 digits) trained 3 epochs; a
    fresh copy per test."""
    return copy.deepcopy(_trained_vit)


@pytest.fixture
def zero_residual_branch():
    """``fn(model, name)``: make block ``name`` an exact identity on its (non-negative) input —
    its branch's last BatchNorm outputs zeros, so ``relu(x + 0) = x``."""

    def zero(model, name):
        with torch.no_grad():
            bn = model.get_submodule(name).bn2
            bn.weight.zero_()
            bn.bias.zero_()
        return model

    return zero


@pytest.fixture
def fresh_catalog(monkeypatch):
    """The criterion catalog as built-ins only; whatever a test registers or loads is undone."""
    monkeypatch.setattr(catalog, "_failures", [])
    monkeypatch.setattr(catalog, "_loaded", {})
    monkeypatch.setattr(catalog, "_entry_points_loaded", False)
    with catalog.CRITERIA.restored():
        yield catalog


SHARED_DATA_ENV = "LAYERPRUNE_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$LAYERPRUNE_DATA``, the folder holding ``cifar10-jpeg/`` and ``cifar10-resnet/`` (``.ci/run``
    points it at ``../shared/data``); tests that need it skip where it is absent."""
    root = os.environ.get(SHARED_DATA_ENV)
    if not root:
        pytest.skip(f"needs CIFAR-10 and the pretrained CIFAR ResNets: set {SHARED_DATA_ENV} to the folder "
                    "holding cifar10-jpeg/ and cifar10-resnet/ (e.g. ../shared/data)")
    missing = [name for name in ("cifar10-jpeg/train", "cifar10-jpeg/test", "cifar10-resnet") if not (Path(root) / name).is_dir()]
    if missing:
        pytest.skip(f"{SHARED_DATA_ENV}={root} lacks {', '.join(missing)}")
    return Path(root)


@pytest.fixture
def skip_without_shared_data(request):
    """``fn(path)``: skip the test (as :func:`shared_data` does) when the recipe or suite at ``path``
    reads its data or checkpoints from ``$LAYERPRUNE_DATA`` and that folder is absent."""

    def check(path: Path) -> None:
        if SHARED_DATA_ENV in Path(path).read_text():
            request.getfixturevalue("shared_data")

    return check


@pytest.fixture(scope="session")
def cifar_jpeg_subset(shared_data, tmp_path_factory) -> Path:
    """A few hundred CIFAR-10 JPEG files as an image folder (links to ``$LAYERPRUNE_DATA``):
    20 training and 30 test images per class."""
    root = tmp_path_factory.mktemp("cifar10-subset")
    for split, count in (("train", 20), ("test", 30)):
        for folder in sorted((shared_data / "cifar10-jpeg" / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                (root / split / folder.name / image.name).symlink_to(image.resolve())
    return root


class CheckpointServer:
    """An HTTP server on 127.0.0.1 that serves the files of ``folder`` as a checkpoint host would:
    ``/files/NAME`` the file, ``/truncated/NAME`` its first half under the full Content-Length (a
    dropped connection), ``/as/NAME/OTHER`` the file NAME's bytes under the name OTHER (a file that
    changed), anything else 404. ``requests`` counts the requests answered."""

    def __init__(self, folder: Path) -> None:
        import http.server
        import threading

        self.folder, self.requests = Path(folder), 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests += 1
                parts = self.path.strip("/").split("/")
                kind = parts[0]
                name = parts[1] if kind == "as" and len(parts) == 3 else parts[-1]
                path = server.folder / name
                if kind not in ("files", "truncated", "as") or not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if kind == "truncated" else data)
                self.close_connection = True

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, kind: str = "files", served: str | None = None) -> str:
        """The URL of ``name``; with ``served``, a URL named ``name`` that serves ``served``'s bytes."""
        if served is not None:
            return f"http://127.0.0.1:{self.port}/as/{served}/{name}"
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def checkpoint_server(shared_data, tmp_path, monkeypatch):
    """A :class:`CheckpointServer` of the real CIFAR-10 ResNet checkpoints in
    ``$LAYERPRUNE_DATA/cifar10-resnet/``, with torch hub's cache (``$TORCH_HOME``) in a fresh
    temporary folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server = CheckpointServer(shared_data / "cifar10-resnet")
    yield server
    server.stop()
