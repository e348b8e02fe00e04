"""``python -m engine sweep``: many models x many configurations through compress + evaluate, on local worker
processes or a Ray cluster, into results a re-run continues and reports with Pareto fronts and plots.

``engine.sweep.run`` runs it (``run_sweep``), ``inputs`` reads the models and configurations, ``jobs`` is one run,
``pareto``, ``plots`` and ``report`` turn the rows into the reports, ``ray_backend`` runs the jobs as Ray tasks.
"""

from importlib import import_module
from typing import Any

# Each public name's module, imported on first use: the command line builds ``sweep``'s parser on every command, and
# the running modules (processes, reports, plots) would slow them all.
_MODULES = {
    "PRESETS": "inputs",
    "Config": "inputs",
    "ModelEntry": "inputs",
    "load_configs": "inputs",
    "load_models": "inputs",
    "MEASURED_KEYS": "jobs",
    "Settings": "jobs",
    "pareto_front": "pareto",
    "SweepResult": "run",
    "run_sweep": "run",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'engine.sweep' has no attribute {name!r}")
    return getattr(import_module(f"engine.sweep.{_MODULES[name]}"), name)


__all__ = [
    "MEASURED_KEYS",
    "PRESETS",
    "Config",
    "ModelEntry",
    "Settings",
    "SweepResult",
    "load_configs",
    "load_models",
    "pareto_front",
    "run_sweep",
]
