"""The application layer: drivers that build models and data sets by name and call the library
(``score_model`` behind ``layerprune score``, ``export_path`` behind ``layerprune export``).
Recipes and the bench are their own rooms."""

from layerprune.app.export import export_path
from layerprune.app.score import ScoreReport, score_model

__all__ = ["ScoreReport", "export_path", "score_model"]
