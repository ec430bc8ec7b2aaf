"""Matplotlib without a display, and PNGs written atomically (a failed plot keeps the old file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerprune.io import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend unless one was chosen already."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return path
