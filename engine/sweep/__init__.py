"""``python -m engine sweep``: many models x many configurations through compress + evaluate, on local worker
processes or a Ray cluster, into results a re-run continues and reports with Pareto fronts and plots.

``engine.sweep.run`` runs it (``run_sweep``), ``inputs`` reads the models and configurations, ``jobs`` is one run,
``pareto``, ``plots`` and ``report`` turn the rows into the reports, ``ray_backend`` runs the jobs as Ray tasks.
"""

from engine.sweep.inputs import PRESETS, Config, ModelEntry, load_configs, load_models
from engine.sweep.jobs import MEASURED_KEYS, Settings
from engine.sweep.pareto import pareto_front
from engine.sweep.run import SweepResult, run_sweep

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
