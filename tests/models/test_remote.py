"""Checkpoints by URL, against a real HTTP server on 127.0.0.1 serving the real CIFAR-10 ResNet
checkpoints: downloaded once into torch hub's cache and verified, reused without the network, and
every failed download one line that names the URL and leaves nothing in the cache."""

import hashlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from layerprune import FetchError, create_model
from layerprune.cli import app
from layerprune.models.remote import cache_dir, fetch, hash_prefix, is_url, url_problem

R56 = "resnet56-4bfd9763.th"
R20 = "resnet20-12fca82f.th"
runner = CliRunner()


def _cache_files() -> list[Path]:
    """Everything in torch hub's checkpoint folder, temporary files included."""
    folder = cache_dir()
    return sorted(folder.iterdir()) if folder.exists() else []


def test_the_name_gives_the_hash_prefix_as_torch_hub_reads_it():
    assert hash_prefix(R56) == "4bfd9763"
    assert hash_prefix("resnet50_a1_0-14fe96d1.pth") == "14fe96d1"
    assert hash_prefix("vit-b16-224.pth") is None  # a number, not a hash
    assert hash_prefix("model.pth") is None
    assert is_url("https://host/x.th") and is_url("HTTP://host/x.th") and not is_url("/tmp/x.th")
    assert not is_url("C:/weights/x.th") and not is_url("weights/https.th")
    assert "only http:// and https://" in url_problem("ftp://host/x.th")
    assert "names no file" in url_problem("https://host/dir/")


def test_a_download_lands_in_torch_hubs_cache_verified_and_loads(checkpoint_server, shared_data, tmp_path):
    url = checkpoint_server.url(R56)
    path = fetch(url)
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / R56  # where torch.hub keeps them
    assert path.read_bytes() == (shared_data / "cifar10-resnet" / R56).read_bytes()
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("4bfd9763")
    assert _cache_files() == [path]  # no temporary file left beside it
    model = create_model("cifar_resnet56", num_classes=10, checkpoint=url)
    reference = create_model("cifar_resnet56", num_classes=10, checkpoint=str(shared_data / "cifar10-resnet" / R56))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_second_run_uses_the_cache_without_the_network(checkpoint_server):
    url = checkpoint_server.url(R20)
    first = fetch(url)
    served = checkpoint_server.requests
    checkpoint_server.stop()
    assert fetch(url) == first and checkpoint_server.requests == served  # not asked again
    result = runner.invoke(app, ["inspect", "cifar_resnet20", "--checkpoint", url])
    assert result.exit_code == 0, result.output


def test_a_file_whose_hash_differs_from_its_name_is_refused_and_not_kept(checkpoint_server):
    url = checkpoint_server.url(R56, served=R20)  # resnet20's bytes under resnet56's name
    with pytest.raises(FetchError) as info:
        fetch(url)
    message = str(info.value)
    assert message.startswith(f"{url}: the file's SHA-256 starts with 12fca82f, not 4bfd9763")
    assert "give a local file instead" in message and "\n" not in message
    assert _cache_files() == []


def test_a_truncated_download_is_refused_and_not_kept(checkpoint_server, shared_data):
    size = (shared_data / "cifar10-resnet" / R56).stat().st_size
    url = checkpoint_server.url(R56, kind="truncated")
    with pytest.raises(FetchError, match=rf"^{url}: the download stopped after {size // 2:,} of {size:,} bytes "
                                         r"\(truncated\); it was not kept; give a local file instead$"):
        fetch(url)
    assert _cache_files() == []


def test_an_http_error_names_the_url_and_status(checkpoint_server):
    url = checkpoint_server.url("resnet32-d509ac18.th")  # not served
    with pytest.raises(FetchError, match=rf"^{url}: HTTP 404 Not Found; give a local file instead$"):
        fetch(url)
    assert _cache_files() == []


@pytest.mark.parametrize("where", ["stopped server", "unresolvable host"])
def test_no_network_is_one_line_on_the_command_line_exit_2(checkpoint_server, where):
    if where == "stopped server":
        url = checkpoint_server.url(R56)
        checkpoint_server.stop()  # nothing listens there any more: connection refused
    else:
        url = f"https://checkpoints.layerprune.invalid/{R56}"  # .invalid never resolves (RFC 2606)
    result = runner.invoke(app, ["inspect", "cifar_resnet56", "--checkpoint", url])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"error: {url}: cannot be reached (") and "no network?)" in line
    assert line.endswith("give a local file instead") and "\n" not in line and "Traceback" not in line
    assert _cache_files() == []


def test_a_recipe_names_its_key_and_the_set_to_use_instead(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = f"https://checkpoints.layerprune.invalid/{R20}"
    recipe = Path(__file__).resolve().parents[2] / "recipes/quickstart.yaml"
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(recipe), "--out", str(out), "--set", f"model.checkpoint={url}"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"error: model.checkpoint: {url}: cannot be reached")
    assert line.endswith("give a local file instead: --set model.checkpoint=PATH") and "\n" not in line
    assert not out.exists()


def test_validate_accepts_a_url_without_fetching_it_and_refuses_other_schemes(tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes/quickstart.yaml"
    ok = runner.invoke(app, ["validate", str(recipe), "--set", f"model.checkpoint=https://checkpoints.layerprune.invalid/{R20}"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate", str(recipe), "--set", "model.checkpoint=s3://bucket/r20.th"])
    assert bad.exit_code == 2 and "model.checkpoint: s3://bucket/r20.th: only http:// and https:// URLs" in bad.output
