"""timm's pretrained weights without a network: one clear error, without the Hub's retry loop."""

import socket

import pytest

from layerprune.errors import ModelError
from layerprune.models import create_model


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_hub_reachable(), reason="needs a machine without access to the Hugging Face Hub")
def test_pretrained_weights_offline_fail_once_with_a_clear_error(caplog, monkeypatch):
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(ModelError, match=r"resnet18: pretrained weights could not be fetched .*checkpoint file"):
        create_model("resnet18", pretrained=True)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]  # no back-off loop
    assert constants.HF_HUB_OFFLINE == before  # offline mode was only for that call
