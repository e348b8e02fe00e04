"""Compression options, parsed and checked once, then resolved per tensor for the passes.

A recipe sets options globally, overrides them per op type and per tensor-name regex, and excludes tensors by
regex.  Its JSON form (``--recipe FILE.json``) is the same dictionary ``Recipe.to_dict`` returns::

    {
      "quantize": "dynamic-int8",            # global options ...
      "granularity": "channel",
      "scale": "mse",
      "min_elements": 4096,
      "ops": {"DEPTHWISE_CONV_2D": {"quantize": "float16"}},     # ... per op type (the weight's first reader)
      "tensors": {"classifier": {"quantize": "weight-int8", "granularity": "tensor"}},   # ... per name regex
      "exclude": ["^stem/"]                  # left untouched
    }

Later layers win: global < op type < tensor regex (in file order).  Every name is checked when the recipe is
built, so a typo is an error naming it rather than an option silently ignored; so is an option that would do
nothing (a clustering setting without ``cluster``, ``observer`` without a full-integer mode, ...).  Errors name
an option as it was given: ``--quantize`` on the command line, ``quantize=`` in Python, the recipe otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import EngineError
from engine.format.ir import BUILTIN_OPS
from engine.quant.observers import make_observer
from engine.quant.pruning import parse_pattern
from engine.registry import ACTIVATION_SCHEMES, CODEBOOK_METHODS, ROUNDING_METHODS, SCALE_METHODS

# Weight modes: mode -> (how ops read the weight, bits of its levels by default); None stores float16.  The
# full-integer modes are the activation schemes registered in engine.registry.ACTIVATION_SCHEMES (int8, int16x8).
WEIGHT_MODES: dict[str, tuple[str, int | None]] = {
    "float16": ("dequantize", None),
    "weight-int8": ("dequantize", 8),
    "dynamic-int8": ("hybrid", 8),
    "weight-int4": ("dequantize", 4),
    "dynamic-int4": ("hybrid", 4),
}


def is_full_integer(mode: str | None) -> bool:
    """Whether ``mode`` quantizes the whole model (weights and activations) rather than weights only."""
    return mode is not None and mode in ACTIVATION_SCHEMES


def mode_names() -> tuple[str, ...]:
    """Every ``quantize`` mode: the weight modes, then the full-integer ones (plugins' included)."""
    return (*WEIGHT_MODES, *ACTIVATION_SCHEMES)


def _full_integer_names() -> str:
    return " or ".join(ACTIVATION_SCHEMES)


# The model's interface in a full-integer model: float with QUANTIZE/DEQUANTIZE at the edges, or integer.
IO_TYPES = ("float", "int8", "uint8")
# Options of the whole model rather than of one tensor: only the recipe's global section may set them.
MODEL_OPTIONS = ("io", "bias_correction", "strict", "equalize", "gradual")
PRUNE_SCOPES = ("layer", "global")
# Channel pruning: take the pruned filters out of the graph where it allows (smaller tensors, less compute), or
# only zero them (same shapes; the readers' matching input channels are zeroed too, so both compute the same).
PRUNE_CHANNELS = ("remove", "zero")
CLUSTER_GRANULARITIES = ("tensor", "channel")
# kmeans++ first: on the MediaPipe weights it gives the best or near-best error at K = 16, 64 and 256, where
# density starts Lloyd in poor local optima at large K and linear at small K (weight SQNR, docs/cli.md).
CLUSTER_STORAGES = ("values", "gather")
SPARSE_FORMATS = ("tflite", "dense")
BLOCK_SIZES = (32, 64, 128, 256)
GRANULARITIES = ("channel", "tensor", *(f"block:{b}" for b in BLOCK_SIZES))
# Below this many elements a weight is left as it is.  Measured on the 11 MediaPipe models LiteRT runs (docs/cli.md):
# against 1024, it raises the median worst-output SQNR by 2.4 dB for int8 (2.3 dB for int4 with mse) for 1%
# more bytes; the small tensors it keeps (depthwise filters, PRELU alphas) carry 12 bytes of per-channel
# parameters per channel once quantized, and the outputs are sensitive to them.
DEFAULT_MIN_ELEMENTS = 4096
# Gradual quantization (``--gradual [STAGES]``): the ops are quantized in this many stages in graph order, and each
# stage's data-fitted parameters (activation ranges, data-aware rounding's layer inputs) are measured on the model
# with the earlier stages already quantized.
DEFAULT_GRADUAL_STAGES = 4
_SECTIONS = ("ops", "tensors", "exclude")


@dataclass(frozen=True)
class TensorOptions:
    """What to do with one weight.  ``quantize=None`` leaves it as it is."""

    quantize: str | None = None
    bits: int | None = None
    granularity: str = "channel"
    scale: str | None = None
    rounding: str = "nearest"
    min_elements: int = DEFAULT_MIN_ELEMENTS
    prune: float | None = None
    prune_pattern: str = "unstructured"
    prune_scope: str = "layer"
    prune_channels: str = "remove"
    sparse_format: str = "tflite"
    cluster: int | None = None
    cluster_granularity: str = "tensor"
    cluster_init: str = "kmeans++"
    cluster_storage: str = "values"
    observer: str = "minmax"
    io: str = "float"
    bias_correction: bool = False
    strict: bool = False
    equalize: bool = False
    gradual: int | None = None

    @property
    def scale_method(self) -> str:
        """The scale search: as set, else "minmax" for 8-bit levels and "mse" below.  Measured (docs/cli.md): at 8 bits
        the two are within 1 dB of output SQNR and mse takes 8x longer; at 4 bits mse gains 2.3 dB."""
        if self.scale is not None:
            return self.scale
        if self.form == "static":  # all weights int8, small filters too: mse gains up to 8 dB there (docs/cli.md)
            return "mse"
        return "minmax" if (self.level_bits or 8) >= 8 else "mse"

    @property
    def form(self) -> str | None:
        """ "dequantize" (DEQUANTIZE before float ops) or "hybrid" (ops read integer weights), None if untouched."""
        if self.quantize is None:
            return None
        return "static" if is_full_integer(self.quantize) else WEIGHT_MODES[self.quantize][0]

    @property
    def level_bits(self) -> int | None:
        """Bits of the quantization levels (None for float16)."""
        if self.quantize is None:
            return None
        if self.bits is not None:
            return self.bits
        return 8 if is_full_integer(self.quantize) else WEIGHT_MODES[self.quantize][1]

    @property
    def changes_weights(self) -> bool:
        """Whether any pass has work to do on the weight."""
        return self.quantize is not None or self.prune is not None or self.cluster is not None

    @property
    def block_size(self) -> int | None:
        return int(self.granularity.split(":")[1]) if self.granularity.startswith("block:") else None


_OPTION_NAMES = tuple(f.name for f in fields(TensorOptions))
# Options that do something only when another is set somewhere in the recipe: option -> that option.
_NEEDS = {
    **dict.fromkeys(("prune_pattern", "prune_scope", "prune_channels"), "prune"),
    **dict.fromkeys(("cluster_granularity", "cluster_init", "cluster_storage"), "cluster"),
}
# Options of integer weight levels: they need an integer quantize mode somewhere (float16 has no scales).
LEVEL_OPTIONS = ("bits", "granularity", "scale", "rounding")
# Options only full-integer quantization reads.
_STATIC_OPTIONS = ("io", "observer", "bias_correction", "strict")


class Origin(NamedTuple):
    """Where options were given, so that an error names them as the user wrote them: ``name`` spells an option
    there (``--min-elements``, ``min_elements=``, or ``min_elements`` in a recipe), ``where`` starts the message
    (the recipe section) when the name alone does not say where."""

    name: Callable[[str], str]
    where: str | None = None

    def error(self, text: str) -> EngineError:
        return EngineError(f"{self.where}: {text}" if self.where else text)


FLAGS = Origin(lambda option: "--" + option.replace("_", "-"))
KEYWORDS = Origin(lambda option: f"{option}=")


def _in_recipe(where: str) -> Origin:
    return Origin(lambda option: option, where)


RECIPE = _in_recipe("recipe")


def _check_options(options: dict[str, Any], origin_of: Callable[[str], Origin]) -> dict[str, Any]:
    """``options`` with each name and value checked; raises naming the first bad one as it was given."""
    for name, value in options.items():
        origin = origin_of(name)
        n = origin.name
        if name not in _OPTION_NAMES:
            raise origin.error(f"unknown option {n(name)!r} (options: {', '.join(_OPTION_NAMES)})")
        if name == "quantize" and value is not None and value not in mode_names():
            raise origin.error(f"unknown {n(name)} mode {value!r} (modes: {', '.join(mode_names())})")
        if name == "bits" and value is not None and (not isinstance(value, int) or not 2 <= value <= 8):
            raise origin.error(f"{n(name)} must be an integer from 2 to 8, not {value!r}")
        if name == "granularity" and value not in GRANULARITIES:
            raise origin.error(f"unknown {n(name)} {value!r} (granularities: {', '.join(GRANULARITIES)})")
        if name == "rounding" and value not in ROUNDING_METHODS:
            raise origin.error(f"unknown {n(name)} method {value!r} (methods: {', '.join(ROUNDING_METHODS)})")
        if name == "scale" and value is not None and value not in SCALE_METHODS:
            raise origin.error(f"unknown {n(name)} method {value!r} (methods: {', '.join(SCALE_METHODS)})")
        if name == "min_elements" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise origin.error(f"{n(name)} must be a non-negative integer, not {value!r}")
        if (
            name == "prune"
            and value is not None
            and (not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1)
        ):
            raise origin.error(f"{n(name)} is the fraction of weights to zero, from 0 up to 1, not {value!r}")
        for option, parse in (("prune_pattern", parse_pattern), ("observer", make_observer)):
            if name == option:
                try:
                    parse(value)
                except EngineError as exc:
                    raise origin.error(f"{n(name)}: {exc}") from None
        if (
            name == "cluster"
            and value is not None
            and (not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 256)
        ):
            raise origin.error(f"{n(name)} is the number of shared values, 2 to 256, not {value!r}")
        for option, allowed in (
            ("prune_scope", PRUNE_SCOPES),
            ("prune_channels", PRUNE_CHANNELS),
            ("cluster_granularity", CLUSTER_GRANULARITIES),
            ("cluster_init", CODEBOOK_METHODS),
            ("cluster_storage", CLUSTER_STORAGES),
            ("io", IO_TYPES),
            ("sparse_format", SPARSE_FORMATS),
        ):
            if name == option and value not in allowed:
                raise origin.error(f"unknown {n(name)} {value!r} (choose from {', '.join(allowed)})")
        if name in ("bias_correction", "strict", "equalize") and not isinstance(value, bool):
            raise origin.error(f"{n(name)} must be true or false, not {value!r}")
        if (
            name == "gradual"
            and value is not None
            and (not isinstance(value, int) or isinstance(value, bool) or value < 2)
        ):
            raise origin.error(f"{n(name)} is the number of stages to quantize in, 2 or more, not {value!r}")
    return dict(options)


def _check_local(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Per-op or per-tensor options: checked as global ones, but model-wide options have no meaning there, and
    full-integer quantization is all or nothing for the model (an op can only be left float, with null)."""
    origin = _in_recipe(where)
    checked = _check_options(options, lambda _: origin)
    for name in MODEL_OPTIONS:
        if name in checked:
            raise origin.error(f"{name} applies to the whole model; set it in the recipe's global options")
    if is_full_integer(checked.get("quantize")):
        raise origin.error(f"{checked['quantize']} applies to the whole model; set it globally")
    return checked


def _check_combination(options: TensorOptions, origin_of: Callable[[str], Origin]) -> None:
    """Refuse combinations no encoding exists for (the per-name checks passed already), naming the option that
    does not fit the others."""
    mode, bits = options.quantize, options.bits
    if options.cluster is not None and options.cluster_storage == "gather" and mode is not None:
        origin = origin_of("cluster_storage")
        n = origin.name
        raise origin.error(
            f"{n('cluster_storage')} gather rebuilds the weight at run time from a float codebook, so it cannot"
            f" be quantized too; use {n('cluster_storage')} values with {n('quantize')}"
        )
    if mode is None:
        return
    origin = origin_of("bits")
    n = origin.name
    if is_full_integer(mode):
        if bits is not None and bits != 8:
            raise origin.error(f"{mode} stores 8-bit weights; {n('bits')} do not apply")
        allowed = ACTIVATION_SCHEMES.get(mode).integer_io
        if options.io != "float" and options.io not in allowed:
            origin = origin_of("io")
            interfaces = f"takes {origin.name('io')} {', '.join(allowed)}" if allowed else "keeps a float interface"
            raise origin.error(f"{origin.name('io')} {options.io} does not apply: {mode} {interfaces}")
        return
    if mode == "float16":
        if bits is not None:
            raise origin.error(f"{n('bits')} do not apply to float16 (use weight-int8/-int4 or dynamic-int8/-int4)")
        return
    container = WEIGHT_MODES[mode][1]
    if bits is not None and container is not None and bits > container:
        raise origin.error(f"{mode} holds at most {container}-bit levels, not {n('bits')} {bits} (use an int8 mode)")
    if options.block_size is not None:
        origin = origin_of("granularity")
        if options.level_bits is not None and options.level_bits > 4:
            raise origin.error(
                f"{origin.name('granularity')} {options.granularity}: block granularity is for 4-bit (or fewer) "
                f"weights, not {mode}"
            )
        if mode != "dynamic-int4":
            raise origin.error(
                f"{origin.name('granularity')} {options.granularity}: blockwise weights run only in dynamic-int4 "
                f"(read by FULLY_CONNECTED), not {mode}"
            )


def _per_tensor(granularity: Any) -> bool:
    return granularity == "tensor"


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise EngineError(f"{where}: bad regular expression {pattern!r}: {exc}") from None


@dataclass
class Recipe:
    """Options for every weight: global, per op type, per tensor-name regex, and an exclude list.

    ``caller`` is how the options over the recipe were given (`FLAGS` on the command line, `KEYWORDS` in Python)
    and ``overridden`` which global options came that way, so that an error names ``--quantize`` or
    ``quantize=`` rather than a recipe the user never wrote.
    """

    options: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    caller: Origin = field(default=KEYWORDS, repr=False, compare=False)
    overridden: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.options = _check_options(self.options, self._origin)
        for op, overrides in self.ops.items():
            if op not in BUILTIN_OPS:
                raise EngineError(f"recipe: unknown op type {op!r} in 'ops'")
            self.ops[op] = _check_local(overrides, f"recipe ops[{op!r}]")
        for pattern, overrides in self.tensors.items():
            _compile(pattern, "recipe tensors")
            self.tensors[pattern] = _check_local(overrides, f"recipe tensors[{pattern!r}]")
        self._tensor_patterns = [(_compile(p, "recipe tensors"), o) for p, o in self.tensors.items()]
        self._exclude = [_compile(p, "recipe exclude") for p in self.exclude]
        _check_combination(TensorOptions(**self.options), self._origin)
        self._check_used()

    def _origin(self, option: str) -> Origin:
        return self.caller if option in self.overridden else RECIPE

    def _check_used(self) -> None:
        """Refuse an option that would do nothing: a pruning or clustering setting without pruning or clustering,
        scale settings without integer weights, full-integer settings without a full-integer mode."""
        sections = [
            (self.options, self._origin),
            *((o, lambda _, w=f"recipe ops[{op!r}]": _in_recipe(w)) for op, o in self.ops.items()),
            *((o, lambda _, w=f"recipe tensors[{p!r}]": _in_recipe(w)) for p, o in self.tensors.items()),
        ]

        def anywhere(option: str, test: Callable[[Any], bool] = lambda v: v is not None) -> bool:
            return any(option in options and test(options[option]) for options, _ in sections)

        mode = self.options.get("quantize")
        for options, origin_of in sections:
            for name in options:
                origin = origin_of(name)
                n = origin.name
                if name in _NEEDS and not anywhere(_NEEDS[name]):
                    raise origin.error(f"{n(name)} does nothing without {n(_NEEDS[name])}")
                if name == "prune_channels" and not anywhere("prune_pattern", lambda v: v == "channel"):
                    raise origin.error(f"{n(name)} does nothing without {n('prune_pattern')} channel")
                if name in LEVEL_OPTIONS and not anywhere("quantize", lambda v: v not in (None, "float16")):
                    raise origin.error(f"{n(name)} does nothing without an integer {n('quantize')} mode")
                if name == "equalize" and not (is_full_integer(mode) or anywhere("granularity", _per_tensor)):
                    raise origin.error(
                        f"{n(name)} balances channel ranges for what has one scale per tensor: weights with "
                        f"{n('granularity')} tensor in a weight mode, or the activations of a full-integer mode; it "
                        "does nothing otherwise (per-channel scales fit each channel already; docs/cli.md)"
                    )
                if (
                    name == "gradual"
                    and options[name] is not None
                    and not (is_full_integer(mode) or self.fits_to_data())
                ):
                    raise origin.error(
                        f"{n(name)} stages what is fitted to data: it does nothing without {n('quantize')} "
                        f"{_full_integer_names()} or a data-aware {n('rounding')}"
                    )
                if name == "granularity" and is_full_integer(mode):
                    raise origin.error(
                        f"{n(name)} does nothing in {mode}: its weights are per output channel (BATCH_MATMUL's per "
                        "tensor)"
                    )
                if name in _STATIC_OPTIONS and not is_full_integer(mode):
                    raise origin.error(
                        f"{n(name)} does nothing without {n('quantize')} {_full_integer_names()} (full-integer "
                        "quantization)"
                    )

    def _layers(self) -> tuple[dict[str, Any], ...]:
        """The global options, then every per-op and per-tensor entry."""
        return (self.options, *self.ops.values(), *self.tensors.values())

    def sets(self, option: str) -> bool:
        """Whether ``option`` is given anywhere (globally, by a flag or keyword, per op or per tensor pattern) rather
        than left to its default."""
        return any(option in layer for layer in self._layers())

    def given(self, option: str) -> set[Any]:
        """Every value ``option`` is given anywhere (globally, per op, per tensor pattern): a pass whose values are
        none of these has nothing to do, and need not resolve the recipe weight by weight."""
        return {layer[option] for layer in self._layers() if option in layer}

    def fits_to_data(self) -> bool:
        """Whether a rounding method other than nearest is asked for anywhere: it reads calibration samples."""
        return any(layer.get("rounding", "nearest") != "nearest" for layer in self._layers())

    def check_calibration(self, given: bool) -> None:
        """Calibration data is read by the full-integer modes and data-aware rounding, which cannot do without it."""
        mode, n = self.options.get("quantize"), self.caller.name
        if given and not is_full_integer(mode) and not self.fits_to_data():
            raise self.caller.error(
                f"{n('calibration')} does nothing without {n('quantize')} {_full_integer_names()} (full-integer "
                f"quantization) or a data-aware {n('rounding')}"
            )
        if not given and self.fits_to_data() and not is_full_integer(mode):
            raise self.caller.error(
                f"{n('rounding')} {self.options.get('rounding', 'per op/tensor')} fits weights to their layers' "
                f"inputs: pass {n('calibration')} DATA (samples the float model runs on)"
            )
        if not given and is_full_integer(mode):
            raise self.caller.error(
                f"{n('quantize')} {mode} needs calibration data: pass {n('calibration')} DATA (.npz keyed by input "
                "name, or one array for a single-input model; the leading axis is the sample)"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        if not isinstance(data, dict):
            raise EngineError("recipe: expected a JSON object")
        options = {k: v for k, v in data.items() if k not in _SECTIONS}
        sections = {k: data[k] for k in _SECTIONS if k in data}
        if not isinstance(sections.get("ops", {}), dict) or not isinstance(sections.get("tensors", {}), dict):
            raise EngineError("recipe: 'ops' and 'tensors' must be objects mapping a name or regex to options")
        if not isinstance(sections.get("exclude", []), list):
            raise EngineError("recipe: 'exclude' must be a list of regular expressions")
        return cls(
            options, dict(sections.get("ops", {})), dict(sections.get("tensors", {})), sections.get("exclude", [])
        )

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise EngineError(f"recipe {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EngineError(f"recipe {path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.options)
        if self.ops:
            out["ops"] = self.ops
        if self.tensors:
            out["tensors"] = self.tensors
        if self.exclude:
            out["exclude"] = self.exclude
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def with_options(self, exclude: list[str] | None = None, *, origin: Origin = KEYWORDS, **options: Any) -> Recipe:
        """A copy with global options updated and exclude patterns added (command-line flags or keyword arguments
        over a recipe); ``origin`` is how they were given, which errors then name."""
        for pattern in exclude or []:
            _compile(pattern, origin.name("exclude"))
        return Recipe(
            {**self.options, **options},
            dict(self.ops),
            dict(self.tensors),
            [*self.exclude, *(exclude or [])],
            caller=origin,
            overridden=self.overridden | set(options),
        )

    def excludes(self, tensor_name: str) -> bool:
        return any(p.search(tensor_name) for p in self._exclude)

    def resolve(self, op_name: str, tensor_name: str) -> TensorOptions:
        """The options for one weight: global, then its op type's, then every matching tensor regex in order."""
        merged = dict(self.options)
        merged.update(self.ops.get(op_name, {}))
        for pattern, overrides in self._tensor_patterns:
            if pattern.search(tensor_name):
                merged.update(overrides)
        options = replace(TensorOptions(), **merged)
        origin = _in_recipe(f"recipe for tensor {tensor_name!r}")
        _check_combination(options, lambda _: origin)
        return options
