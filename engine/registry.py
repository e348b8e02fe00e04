"""The public seam for quantization methods: built-ins and plugins register through the same door.

A ``Registry`` maps names to implementations of one kind; recipe validation, the command line's choices and the
report read it, so a method (or mode) registered before a recipe is built is as selectable as a built-in
(``--scale pow2``, ``{"scale": "pow2"}``).  The kinds:

* ``SCALE_METHODS``: how a weight's rows get their scales.  A scale method is a function
  ``(rows, bits) -> scales``: ``rows`` is a C-contiguous float32 array [R, n], one row per group of weights that
  share a scale (the whole tensor, an output channel or a block, ``engine.quant.uniform.as_rows``); ``bits`` the
  level width (levels are symmetric integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1], zero point 0); it returns
  float32 [R], each > 0, or 0 for an all-zero row.  The engine then rounds every weight to
  ``clip(round(w / scale), -qmax, qmax)``, measures the weight SQNR and stores the codes and scales, in every mode
  that quantizes weights (weight-only, dynamic, full integer).  Built-ins: ``minmax`` (max |w| / qmax) and ``mse``
  (the clipping range with the least squared error).
* ``CODEBOOK_METHODS``: how weight sharing (``--cluster K``) gives each row of a weight (the tensor, or each output
  channel with ``--cluster-granularity channel``) its shared values.  A codebook method is a function
  ``(row, k) -> (codebook, labels)``: ``row`` float32 [n], ``codebook`` float32 with at most ``k`` values,
  ``labels`` uint8 [n] indexing it, ``codebook[labels]`` being the shared weights; selected with
  ``--cluster-init NAME``, stored as values or, with ``--cluster-storage gather``, as uint8 indices and a float32
  codebook per row that GATHER reads.  Built-ins: ``kmeans++``, ``linear``, ``density`` (exact 1-D k-means from
  three initializations).  A fixed non-uniform 4-bit grid (``examples/plugins/nf4_codebook.py``) is one too.
* ``OBSERVERS``: how full-integer calibration turns an activation's stream of values into a range.  An entry is a
  factory ``(argument) -> Observer`` (an ``engine.quant.observers.Observer`` subclass: ``update(values)`` as each
  sample's values stream in, lent for the call (copy what it keeps), ``range(bits, symmetric) -> (lo, hi)`` at
  the end, holding 0); ``argument`` is the text after ``NAME:`` in ``--observer NAME:ARGUMENT``
  (``percentile:99.9``), or None.  Built-ins: ``minmax``, ``percentile``, ``mse``, ``entropy``.
* ``ACTIVATION_SCHEMES``: the full-integer modes, by name (``--quantize NAME``).  An entry is an
  ``engine.quant.activations.ActivationScheme``: the LiteRT integer kernel family that runs the model ("int8" or
  "int16"), the code width and symmetry, and ``params(lo, hi) -> (scale, zero_point)`` for a calibrated range;
  subclass it to change how ranges become parameters.  Built-ins: ``int8`` (asymmetric) and ``int16x8``
  (symmetric int16 activations, int8 weights).  ``examples/plugins/pow2_activations.py`` adds power-of-two scales.

* ``ROUNDING_METHODS``: which level each weight gets once its scales are set (``--rounding NAME``).  A rounding
  method is a function ``(problem) -> codes``: ``problem`` an ``engine.quant.rounding.RoundingProblem`` (the
  weight as rows [C, K] by output channel, each weight's scale, qmax, and what the layer read on calibration
  samples: the inputs' second moment H per row group), ``codes`` int [C, K] in
  [-qmax, qmax].  Built-ins: ``nearest``, ``gptq`` (error feedback through H^-1, as in GPTQ) and ``adaround``
  (learned up/down rounding, as in AdaRound).

A plugin is a Python module that registers on import::

    import numpy as np
    from engine.registry import SCALE_METHODS

    @SCALE_METHODS.register("pow2")
    def pow2(rows: np.ndarray, bits: int) -> np.ndarray:
        qmax = 2 ** (bits - 1) - 1
        peak = np.abs(rows).max(axis=1)
        return np.where(peak > 0, 2.0 ** np.ceil(np.log2(np.maximum(peak, 1e-30) / qmax)), 0).astype(np.float32)

and is loaded with ``python -m engine --plugin my_plugin.py compress ...`` (a file or an importable module name),
or ``engine.load_plugin("my_plugin.py")`` in Python.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from engine.errors import EngineError

if TYPE_CHECKING:
    import numpy as np

    from engine.quant.activations import ActivationScheme

T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one kind (``kind`` names it in errors: "scale method").

    ``builtins``: the module registering the built-in entries, imported the first time the registry is used (a
    lookup, or a plugin registering: a built-in's name stays refused), so that ``import engine`` and the commands
    that need no quantization method start without importing every method (and numpy).
    """

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtins = builtins

    def _load_builtins(self) -> None:
        module, self._builtins = self._builtins, None  # cleared first: that module registers through this registry
        if module is not None:
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``; a name already taken is refused (no silent override)."""
        self._load_builtins()

        def add(entry: T) -> T:
            if not name or any(c.isspace() or c in ":,=" for c in name):
                raise EngineError(f"{self.kind} name {name!r} must be non-empty, without spaces, ':', ',' or '='")
            if name in self._entries:
                raise EngineError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; an unknown name is an error listing the known ones."""
        self._load_builtins()
        if name not in self._entries:
            raise EngineError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def call(self, name: str, *args: Any) -> Any:
        """Call the implementation registered as ``name``; its own failure (a plugin's) becomes one EngineError
        naming it."""
        implementation = self.get(name)
        try:
            return implementation(*args)  # type: ignore[operator]
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.kind} {name!r} failed: {type(exc).__name__}: {exc}") from exc

    def names(self) -> tuple[str, ...]:
        self._load_builtins()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


ScaleMethod = Callable[["np.ndarray", int], "np.ndarray"]
SCALE_METHODS: Registry[ScaleMethod] = Registry("scale method")
# How a row of weights gets a codebook: (row float32 [n], k) -> (codebook float32 [<= k], labels uint8 [n]), the
# shared values and each weight's index into them; the built-ins are 1-D k-means with three initializations.
CodebookMethod = Callable[["np.ndarray", int], tuple["np.ndarray", "np.ndarray"]]
CODEBOOK_METHODS: Registry[CodebookMethod] = Registry("codebook method")
# Factories of calibration observers (engine.quant.observers.Observer subclasses), called with the text after "NAME:" in
# an observer spec ("percentile:99.9"), or None; the built-ins register in engine.quant.observers.
OBSERVERS: Registry[Callable[[str | None], Any]] = Registry("calibration observer", "engine.quant.observers")
# Full-integer modes by name; the built-ins register in engine.quant.activations.
ACTIVATION_SCHEMES: Registry[ActivationScheme] = Registry("full-integer mode", "engine.quant.activations")
# Rounding methods, (RoundingProblem) -> codes; the built-ins register in engine.quant.rounding.
ROUNDING_METHODS: Registry[Callable[[Any], np.ndarray]] = Registry("rounding method", "engine.quant.rounding")


@SCALE_METHODS.register("minmax")
def _minmax(rows: np.ndarray, bits: int) -> np.ndarray:
    from engine.quant import kernels

    return kernels.absmax_scales(rows, bits)


@SCALE_METHODS.register("mse")
def _mse(rows: np.ndarray, bits: int) -> np.ndarray:
    from engine.quant import kernels

    return kernels.mse_scales(rows, bits)


def load_plugin(source: str) -> None:
    """Import a plugin: a ``.py`` file, or a module name importable from here; it registers what it provides.
    Loading the same plugin again does nothing."""
    try:
        if source.endswith(".py"):
            path = Path(source)
            if not path.is_file():
                raise EngineError(f"plugin {source}: file not found")
            name = f"litert_engine_plugin_{path.resolve().stem}_{abs(hash(str(path.resolve())))}"
            if name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(source)
    except EngineError:
        raise
    except Exception as exc:  # a plugin's own error: reported in one line, naming the plugin
        raise EngineError(f"plugin {source} failed to load: {type(exc).__name__}: {exc}") from exc


def _kmeans(init: str) -> CodebookMethod:
    def method(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from engine.quant import kernels

        return kernels.kmeans_1d(row, k, init=init, iterations=_KMEANS_ITERATIONS, keep_zero=True)

    return method


# Lloyd iterations: each costs O(K log n), so running to convergence is cheap (benchmarks/kmeans.py).
_KMEANS_ITERATIONS = 1000
for _init in ("kmeans++", "linear", "density"):
    CODEBOOK_METHODS.register(_init)(_kmeans(_init))
