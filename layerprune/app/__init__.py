"""The application layer: drivers that build models and data sets by name and call the library
(``score_model`` behind ``layerprune score``). Recipes and the bench are their own rooms."""

from layerprune.app.score import ScoreReport, score_model

__all__ = ["ScoreReport", "score_model"]
