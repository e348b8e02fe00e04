"""Accuracy-aware compression: per-op sensitivity (``analyze``) and mixed precision under a quality or accuracy
budget (``compress(..., target_sqnr=...)`` / ``max_accuracy_drop=``), both judged at the model outputs in LiteRT's
default runtime on samples held out from calibration.  Imported on first use, like ``engine.compress``."""

from __future__ import annotations

# The keywords of engine.compress (and their command-line flags) that turn a run into the budgeted search.
BUDGET_KEYWORDS = ("target_sqnr", "max_accuracy_drop", "labels", "optimize", "save_recipe", "holdout", "max_runs")

_EXPORTS = {
    "analyze": "engine.accuracy.sensitivity",
    "Sensitivity": "engine.accuracy.sensitivity",
    "budgeted_compress": "engine.accuracy.search",
    "Budget": "engine.accuracy.search",
    "SearchReport": "engine.accuracy.search",
    "split_samples": "engine.accuracy.candidates",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine.accuracy' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
