"""Checkpoints by URL: fetched once into torch hub's cache, verified, written atomically.

``model.checkpoint`` (and ``--checkpoint``) may be an ``http://`` or ``https://`` URL. The file is
downloaded into the folder ``torch.hub.load_state_dict_from_url`` uses
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), under the URL's
file name, and later runs use it there without the network. Where the file name carries a hash
prefix, as torch.hub's convention has it (``resnet56-4bfd9763.th``: 8 or more hex digits after a
``-`` that start the file's SHA-256), the download is checked against it. A download that fails
(HTTP error, no network, truncated, wrong hash) leaves nothing in the cache and raises
:class:`FetchError`: one line naming the URL, what went wrong and what to do.

>>> path = fetch("https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/"
...              "pretrained_models/resnet56-4bfd9763.th")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from layerprune.errors import FetchError

SCHEMES = ("http", "https")
# torch.hub's convention: "-" then the start of the SHA-256 in hex, before the extension. At least
# 8 digits, so that a plain number in a name ("vit-b16-224.pth") is not taken for a hash.
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")
TIMEOUT = 30.0  # seconds without a byte before a download is given up
CHUNK = 1 << 16
LOCAL_FILE = "give a local file instead"


def is_url(spec: object) -> bool:
    """Whether ``spec`` is a URL (``scheme://...``), as opposed to a path."""
    return isinstance(spec, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) is not None


def url_problem(url: str) -> str | None:
    """What makes ``url`` unfetchable without trying it (for recipe validation), or ``None``."""
    return f"{url}: {problem}" if (problem := _unfetchable(url)) else None


def _unfetchable(url: str) -> str | None:
    parts = urllib.parse.urlparse(url)
    if parts.scheme.lower() not in SCHEMES:
        return f"only http:// and https:// URLs can be fetched; give a local file for {parts.scheme}://"
    if not parts.netloc:
        return "no host in the URL"
    if not file_name(url):
        return "the URL names no file (it must end in the checkpoint's file name)"
    return None


def file_name(url: str) -> str:
    """The name the download is kept under: the last part of the URL's path."""
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name promises (``resnet56-4bfd9763.th`` → ``4bfd9763``), or ``None``."""
    found = HASH_PREFIX.search(name)
    return found.group(1) if found else None


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: torch hub's ``checkpoints`` folder (``$TORCH_HOME``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached(url: str) -> Path:
    """Where ``url``'s file is (or will be) kept."""
    return cache_dir() / file_name(url)


def fetch(url: str, *, progress: bool | None = None, how: str = LOCAL_FILE) -> Path:
    """The local path of ``url``'s file: from the cache, else downloaded into it (verified against
    the hash prefix in its name, written atomically). ``progress``: a progress bar on stderr
    (default: when stderr is a terminal). ``how``: what :class:`FetchError` tells the user to do."""
    if problem := _unfetchable(url):
        raise FetchError(url, problem, how)
    target = cached(url)
    if target.is_file():
        return target
    from layerprune.io import atomic_path, make_dir

    make_dir(target.parent)
    expected = hash_prefix(target.name)
    with atomic_path(target) as tmp:  # nothing is left in the cache unless the whole file is verified
        digest = _download(url, tmp, progress=sys.stderr.isatty() if progress is None else progress, how=how)
        if expected is not None and not digest.startswith(expected):
            raise FetchError(url, f"the file's SHA-256 starts with {digest[:len(expected)]}, not {expected} as its "
                             "name says (a changed or corrupted file); it was not kept", how)
    return target


def _download(url: str, dest: Path, *, progress: bool, how: str) -> str:
    """Stream ``url`` into ``dest``; return the SHA-256 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": "layerprune"})
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(dest, "wb") as out, _Bar(file_name(url), total, progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    bar.advance(len(chunk))
    except urllib.error.HTTPError as exc:
        raise FetchError(url, f"HTTP {exc.code} {exc.reason}", how) from None
    except http.client.IncompleteRead as exc:
        got = done + len(exc.partial)
        expected = f" of {got + exc.expected:,}" if exc.expected is not None else ""
        raise FetchError(url, f"the download stopped after {got:,}{expected} bytes (truncated); it was not kept",
                         how) from None
    except urllib.error.URLError as exc:
        raise FetchError(url, f"cannot be reached ({_reason(exc.reason)}: no network?)", how) from None
    except (socket.timeout, TimeoutError) as exc:
        raise FetchError(url, f"no data for {TIMEOUT:g} s ({_reason(exc)}: no network?)", how) from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise FetchError(url, f"the connection failed after {done:,} bytes ({_reason(exc)}); it was not kept",
                         how) from None
    if total is not None and done < total:
        raise FetchError(url, f"the download stopped after {done:,} of {total:,} bytes (truncated); it was not kept",
                         how)
    return digest.hexdigest()


def _reason(reason: object) -> str:
    if isinstance(reason, socket.gaierror):
        return f"host name not resolved: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class _Bar:
    """A rich progress bar for one download (or nothing)."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.progress = self.task = None
        if enabled:
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self.progress = Progress(*Progress.get_default_columns()[:3], DownloadColumn(), TransferSpeedColumn(),
                                     console=Console(stderr=True), transient=True)
            self.task = self.progress.add_task(f"downloading {name}", total=total)

    def __enter__(self) -> "_Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def advance(self, count: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, count)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def local_checkpoint(spec: str | os.PathLike, *, how: str = LOCAL_FILE) -> Path:
    """``spec`` as a local path: a URL fetched (see :func:`fetch`), a path as it is."""
    return fetch(str(spec), how=how) if is_url(spec) else Path(spec)


__all__ = ["FetchError", "cache_dir", "cached", "fetch", "hash_prefix", "is_url", "local_checkpoint", "url_problem"]
