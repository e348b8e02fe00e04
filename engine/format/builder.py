"""Build small float models from numpy arrays, so tests and examples need no converter.

``GraphBuilder`` appends operators to a one-subgraph ``Model``, inferring every output shape exactly as the
interpreter does (SAME/VALID padding, broadcasting, ...), so what it builds loads and runs in LiteRT.
Named helpers (``conv2d``, ``add``, ...) all go through ``op``, the generic escape hatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine.errors import EngineError
from engine.format.ir import Model, Operator, Subgraph, Table, Tensor, tensor_type
from engine.format.schema import ENUMS, TABLES
from engine.graph.ops import rule

Shape = tuple[int, ...]
Pair = int | tuple[int, int]
TensorLike = Tensor | np.ndarray | None

# Option fields whose values may be given by enum member name ("SAME", "RELU", ...).
_ENUM_FIELDS = {"padding": "Padding", "fused_activation_function": "ActivationFunctionType"}


def _pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    """Output length of a sliding window, as TFLite computes it for SAME and VALID padding."""
    if padding == "SAME":
        return math.ceil(size / stride)
    if padding == "VALID":
        out = (size - (kernel - 1) * dilation - 1) // stride + 1
        if out < 1:
            raise EngineError(f"VALID window of {kernel} (dilation {dilation}) does not fit in size {size}")
        return out
    raise EngineError(f"padding must be 'SAME' or 'VALID', not {padding!r}")


def _spatial_out(shape: Shape, kernel: Pair, stride: Pair, dilation: Pair, padding: str) -> tuple[int, int]:
    """Output (height, width) of a 2-D window over an NHWC shape."""
    if len(shape) != 4:
        raise EngineError(f"expected an NHWC input, got shape {shape}")
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    return _window_out(shape[1], kh, sh, dh, padding), _window_out(shape[2], kw, sw, dw, padding)


def _conv_options(padding: str, stride: Pair, dilation: Pair, activation: str | None) -> dict:
    """The options CONV_2D and DEPTHWISE_CONV_2D share."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    return {"padding": padding, "stride_h": sh, "stride_w": sw, "dilation_h_factor": dh,
            "dilation_w_factor": dw, "fused_activation_function": activation or "NONE"}  # fmt: skip


def _shape(t: Tensor | np.ndarray) -> Shape:
    return t.shape if isinstance(t, Tensor) else np.shape(t)


def _conv_bias(bias: TensorLike, channels: int) -> Tensor | np.ndarray:
    """The given bias, or zeros: the float conv kernels refuse to run without one."""
    return np.zeros(channels, np.float32) if bias is None else bias


class GraphBuilder:
    """Appends operators to a one-subgraph model; tensors get unique readable names like ``conv2d_1/output``."""

    def __init__(self, name: str | None = None) -> None:
        self.model = Model(version=3)
        self.graph = Subgraph(name=name)
        self.model.subgraphs.append(self.graph)
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------------------ tensors

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise EngineError(f"tensor name {name!r} is already used")
        self._names.add(name)
        return name

    def _scope(self, label: str) -> str:
        self._counts[label] = self._counts.get(label, 0) + 1
        return f"{label}_{self._counts[label]}"

    def _tensor(self, name: str, shape: Sequence[int], dtype: np.dtype | type | str) -> Tensor:
        tensor = Tensor(name=self._unique(name), shape=tuple(int(d) for d in shape), type=tensor_type(dtype))
        return self.graph.add_tensor(tensor)

    def input(self, name: str, shape: Sequence[int], dtype: np.dtype | type | str = np.float32) -> Tensor:
        """A graph input."""
        tensor = self._tensor(name, shape, dtype)
        self.graph.inputs.append(tensor)
        return tensor

    def constant(self, array: np.ndarray, name: str | None = None) -> Tensor:
        """A constant tensor with its own buffer (dtype and shape from ``array``)."""
        tensor = Tensor(name=self._unique(name or f"{self._scope('const')}/value"))
        tensor.data = np.asarray(array)
        return self.graph.add_tensor(tensor)

    def output(self, tensor: Tensor, name: str | None = None) -> Tensor:
        """Mark ``tensor`` as a graph output, renaming it to ``name`` when given."""
        if name is not None and name != tensor.name:
            self._names.discard(tensor.name or "")
            tensor.name = self._unique(name)
        self.graph.outputs.append(tensor)
        return tensor

    def build(self) -> Model:
        """The model built so far; it needs at least one output."""
        if not self.graph.outputs:
            raise EngineError("the graph has no outputs; call output() first")
        return self.model

    # ------------------------------------------------------------------------------ generic op

    def op(
        self,
        name: str,
        inputs: Sequence[TensorLike],
        output_shapes: Sequence[Sequence[int]],
        options: dict | None = None,
        dtype: np.dtype | type | str | None = None,
        *,
        label: str | None = None,
        version: int = 1,
    ) -> list[Tensor]:
        """Append builtin op ``name`` and return its new output tensors.

        Arrays among ``inputs`` become constants (named ``weights``/``bias`` where ``engine.graph.ops`` says so),
        ``None`` is an omitted optional input.  ``options`` are the op's options table fields; padding and
        fused activation may be given by name.  Outputs take ``dtype``, else the first input's type.
        """
        op_rule = rule(name)
        scope = self._scope(label or name.lower())
        roles = {op_rule.weight_input: "weights", op_rule.bias_input: "bias"}
        tensors = [
            self.constant(t, f"{scope}/{roles.get(i, f'input_{i}')}") if isinstance(t, np.ndarray) else t
            for i, t in enumerate(inputs)
        ]
        table = None
        if op_rule.options is not None:
            table = Table(op_rule.options, self._option_fields(op_rule.options, options or {}))
        elif options:
            raise EngineError(f"{name} takes no builtin options, got {sorted(options)}")
        if dtype is None:
            first = next((t for t in tensors if t is not None), None)
            if first is None:
                raise EngineError(f"{name}: give dtype when the op has no inputs")
            out_type = first.type
        else:
            out_type = tensor_type(dtype)
        suffixes = ["output"] if len(output_shapes) == 1 else [f"output_{i}" for i in range(len(output_shapes))]
        outputs = [
            self.graph.add_tensor(Tensor(self._unique(f"{scope}/{s}"), tuple(int(d) for d in shape), out_type))
            for s, shape in zip(suffixes, output_shapes, strict=True)
        ]
        opcode = self.model.opcode(name, version)
        self.graph.operators.append(Operator(opcode, list(tensors), list(outputs), builtin_options=table))
        return outputs

    @staticmethod
    def _option_fields(table: str, options: dict) -> dict:
        """Check field names against the schema and store values as the reader would read them back.

        Enum member names become values, sequences typed arrays, scalars Python numbers of the field's
        precision (a float32 field holds 0.1 as 0.10000000149...), so a built model equals its read-back.
        """
        fields = {f["name"]: f for f in TABLES[table]["fields"]}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise EngineError(f"{table} has no field(s) {', '.join(unknown)}")
        result = {}
        for k, v in options.items():
            if isinstance(v, str) and k in _ENUM_FIELDS:
                v = ENUMS[_ENUM_FIELDS[k]][v]
            if fields[k]["kind"] == "vector":
                result[k] = np.asarray(v, fields[k]["element"])
            elif fields[k]["kind"] == "scalar":
                result[k] = np.asarray(v, fields[k]["type"]).item()
            else:
                result[k] = v
        return result

    def _unary(self, name: str, x: Tensor, options: dict | None = None) -> Tensor:
        return self.op(name, [x], [x.shape], options)[0]

    # ------------------------------------------------------------------------------ convolutions

    def conv2d(
        self,
        x: Tensor,
        weights: Tensor | np.ndarray,
        bias: TensorLike = None,
        stride: Pair = 1,
        padding: str = "SAME",
        activation: str | None = None,
        dilation: Pair = 1,
    ) -> Tensor:
        """CONV_2D with OHWI ``weights`` over an NHWC input."""
        ws = _shape(weights)
        if len(ws) != 4 or ws[3] != x.shape[3]:
            raise EngineError(f"conv2d weights must be OHWI with I={x.shape[3]}, got {ws}")
        h, w = _spatial_out(x.shape, ws[1:3], stride, dilation, padding)
        options = _conv_options(padding, stride, dilation, activation)
        inputs = [x, weights, _conv_bias(bias, ws[0])]
        return self.op("CONV_2D", inputs, [(x.shape[0], h, w, ws[0])], options, label="conv2d")[0]

    def depthwise_conv2d(
        self,
        x: Tensor,
        weights: Tensor | np.ndarray,
        bias: TensorLike = None,
        stride: Pair = 1,
        padding: str = "SAME",
        depth_multiplier: int = 1,
        activation: str | None = None,
        dilation: Pair = 1,
    ) -> Tensor:
        """DEPTHWISE_CONV_2D with 1HWO ``weights``, O = input channels * ``depth_multiplier``."""
        ws = _shape(weights)
        if len(ws) != 4 or ws[0] != 1 or ws[3] != x.shape[3] * depth_multiplier:
            raise EngineError(f"depthwise weights must be 1HWO with O={x.shape[3]}*{depth_multiplier}, got {ws}")
        h, w = _spatial_out(x.shape, ws[1:3], stride, dilation, padding)
        options = {**_conv_options(padding, stride, dilation, activation), "depth_multiplier": depth_multiplier}
        inputs = [x, weights, _conv_bias(bias, ws[3])]
        shape = (x.shape[0], h, w, ws[3])
        return self.op("DEPTHWISE_CONV_2D", inputs, [shape], options, label="depthwise_conv2d")[0]

    def fully_connected(
        self,
        x: Tensor,
        weights: Tensor | np.ndarray,
        bias: TensorLike = None,
        activation: str | None = None,
        keep_num_dims: bool = False,
    ) -> Tensor:
        """FULLY_CONNECTED with [out, in] ``weights``: y = x @ W.T + b; no bias is omitted (-1).

        Like the kernel, the input is read as rows of ``in`` values (any shape whose size ``in`` divides),
        except with ``keep_num_dims``, where its last axis must be ``in``.
        """
        units, depth = _shape(weights)
        if (x.shape[-1] != depth) if keep_num_dims else (math.prod(x.shape) % depth):
            raise EngineError(f"fully_connected weights [{units}, {depth}] do not fit input {x.shape}")
        shape = (*x.shape[:-1], units) if keep_num_dims else (math.prod(x.shape) // depth, units)
        options = {"fused_activation_function": activation or "NONE", "keep_num_dims": keep_num_dims}
        return self.op("FULLY_CONNECTED", [x, weights, bias], [shape], options)[0]

    def transpose_conv(
        self,
        x: Tensor,
        weights: Tensor | np.ndarray,
        bias: TensorLike = None,
        stride: Pair = 1,
        padding: str = "SAME",
        activation: str | None = None,
    ) -> Tensor:
        """TRANSPOSE_CONV with OHWI ``weights``; the output size is the one a forward conv would shrink back.

        SAME gives ``input * stride``, VALID ``(input - 1) * stride + kernel``.  No bias is omitted (-1).
        """
        ws = _shape(weights)
        if len(ws) != 4 or len(x.shape) != 4 or ws[3] != x.shape[3]:
            raise EngineError(f"transpose_conv weights must be OHWI with I={x.shape[-1]}, got {ws}")
        (sh, sw) = _pair(stride)
        if padding not in ("SAME", "VALID"):
            raise EngineError(f"padding must be 'SAME' or 'VALID', not {padding!r}")
        same = padding == "SAME"
        h = x.shape[1] * sh if same else (x.shape[1] - 1) * sh + ws[1]
        w = x.shape[2] * sw if same else (x.shape[2] - 1) * sw + ws[2]
        shape = (x.shape[0], h, w, ws[0])
        options = {"padding": padding, "stride_h": sh, "stride_w": sw,
                   "fused_activation_function": activation or "NONE"}  # fmt: skip
        inputs = [np.array(shape, np.int32), weights, x, bias]
        return self.op("TRANSPOSE_CONV", inputs, [shape], options, dtype=x.dtype)[0]

    def conv3d(
        self,
        x: Tensor,
        weights: Tensor | np.ndarray,
        bias: TensorLike = None,
        stride: int | tuple[int, int, int] = 1,
        padding: str = "SAME",
        activation: str | None = None,
        dilation: int | tuple[int, int, int] = 1,
    ) -> Tensor:
        """CONV_3D with DHWIO ``weights`` over an NDHWC input; no bias is omitted (-1)."""
        ws = _shape(weights)
        if len(ws) != 5 or len(x.shape) != 5 or ws[3] != x.shape[4]:
            raise EngineError(f"conv3d weights must be DHWIO with I={x.shape[-1]}, got {ws}")
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        dilations = (dilation,) * 3 if isinstance(dilation, int) else tuple(dilation)
        spatial = [_window_out(*args, padding) for args in zip(x.shape[1:4], ws[:3], strides, dilations, strict=True)]
        options = {"padding": padding, "fused_activation_function": activation or "NONE"}
        for axis, s, d in zip("dhw", strides, dilations, strict=True):
            options |= {f"stride_{axis}": s, f"dilation_{axis}_factor": d}
        shape = (x.shape[0], *spatial, ws[4])
        return self.op("CONV_3D", [x, weights, bias], [shape], options, label="conv3d")[0]

    def batch_matmul(self, x: Tensor, y: Tensor | np.ndarray, adj_x: bool = False, adj_y: bool = False) -> Tensor:
        """BATCH_MATMUL x @ y over the last two axes (transposed first where ``adj_*``), batch axes broadcast."""
        xs, ys = list(x.shape), list(_shape(y))
        if min(len(xs), len(ys)) < 2:
            raise EngineError(f"batch_matmul needs rank >= 2 operands, got {tuple(xs)} and {tuple(ys)}")
        (m, k), (k2, n) = (xs[-1:-3:-1] if adj_x else xs[-2:]), (ys[-1:-3:-1] if adj_y else ys[-2:])
        try:
            batch = np.broadcast_shapes(tuple(xs[:-2]), tuple(ys[:-2]))
        except ValueError:
            batch = None
        if k != k2 or batch is None:
            raise EngineError(f"batch_matmul operands {tuple(xs)} and {tuple(ys)} do not multiply")
        options = {"adj_x": adj_x, "adj_y": adj_y}
        return self.op("BATCH_MATMUL", [x, y], [(*batch, m, n)], options)[0]

    # ------------------------------------------------------------------------------ elementwise

    def _binary(self, name: str, a: TensorLike, c: TensorLike, activation: str | None) -> Tensor:
        shapes = [_shape(t) for t in (a, c)]
        try:
            shape = np.broadcast_shapes(*shapes)
        except ValueError:
            raise EngineError(f"{name}: shapes {shapes[0]} and {shapes[1]} do not broadcast") from None
        return self.op(name, [a, c], [shape], {"fused_activation_function": activation or "NONE"})[0]

    def add(self, a: TensorLike, c: TensorLike, activation: str | None = None) -> Tensor:
        """ADD with numpy broadcasting; either side may be an array (it becomes a constant)."""
        return self._binary("ADD", a, c, activation)

    def sub(self, a: TensorLike, c: TensorLike, activation: str | None = None) -> Tensor:
        """SUB with numpy broadcasting."""
        return self._binary("SUB", a, c, activation)

    def mul(self, a: TensorLike, c: TensorLike, activation: str | None = None) -> Tensor:
        """MUL with numpy broadcasting."""
        return self._binary("MUL", a, c, activation)

    def relu(self, x: Tensor) -> Tensor:
        return self._unary("RELU", x)

    def relu6(self, x: Tensor) -> Tensor:
        return self._unary("RELU6", x)

    def logistic(self, x: Tensor) -> Tensor:
        return self._unary("LOGISTIC", x)

    def tanh(self, x: Tensor) -> Tensor:
        return self._unary("TANH", x)

    def hard_swish(self, x: Tensor) -> Tensor:
        return self._unary("HARD_SWISH", x)

    def leaky_relu(self, x: Tensor, alpha: float = 0.2) -> Tensor:
        return self._unary("LEAKY_RELU", x, {"alpha": float(alpha)})

    def prelu(self, x: Tensor, alpha: np.ndarray) -> Tensor:
        """PRELU: x where x >= 0, else alpha * x; ``alpha`` broadcasts to the input (e.g. one per channel)."""
        shape = np.broadcast_shapes(x.shape, alpha.shape)
        if shape != x.shape:
            raise EngineError(f"prelu alpha {alpha.shape} must broadcast to the input {x.shape}")
        return self.op("PRELU", [x, alpha], [shape])[0]

    def softmax(self, x: Tensor, beta: float = 1.0) -> Tensor:
        """SOFTMAX over the last axis."""
        return self._unary("SOFTMAX", x, {"beta": float(beta)})

    def dequantize(self, x: Tensor) -> Tensor:
        """DEQUANTIZE to float32 (from a float16 constant, or a quantized tensor)."""
        return self.op("DEQUANTIZE", [x], [x.shape], dtype=np.float32)[0]

    # ------------------------------------------------------------------------------ pooling

    def _pool(self, name: str, x: Tensor, size: Pair, stride: Pair | None, padding: str) -> Tensor:
        stride = size if stride is None else stride
        h, w = _spatial_out(x.shape, size, stride, 1, padding)
        (fh, fw), (sh, sw) = _pair(size), _pair(stride)
        options = {"padding": padding, "stride_h": sh, "stride_w": sw, "filter_height": fh, "filter_width": fw}
        return self.op(name, [x], [(x.shape[0], h, w, x.shape[3])], options)[0]

    def max_pool2d(self, x: Tensor, size: Pair, stride: Pair | None = None, padding: str = "VALID") -> Tensor:
        """MAX_POOL_2D over NHWC; ``stride`` defaults to ``size``."""
        return self._pool("MAX_POOL_2D", x, size, stride, padding)

    def average_pool2d(self, x: Tensor, size: Pair, stride: Pair | None = None, padding: str = "VALID") -> Tensor:
        """AVERAGE_POOL_2D over NHWC (SAME averages only the valid cells); ``stride`` defaults to ``size``."""
        return self._pool("AVERAGE_POOL_2D", x, size, stride, padding)

    # ------------------------------------------------------------------------------ shape ops

    def reshape(self, x: Tensor, new_shape: Sequence[int]) -> Tensor:
        """RESHAPE, with at most one -1 inferred; the resolved shape goes in both the int32 input and the options."""
        new_shape = [int(d) for d in new_shape]
        try:
            shape = np.empty(x.shape, np.uint8).reshape(new_shape).shape
        except ValueError:
            raise EngineError(f"cannot reshape {x.shape} to {tuple(new_shape)}") from None
        return self.op("RESHAPE", [x, np.array(shape, np.int32)], [shape], {"new_shape": shape})[0]

    def concatenation(self, tensors: Sequence[Tensor], axis: int, activation: str | None = None) -> Tensor:
        """CONCATENATION along ``axis`` (negative counts from the end)."""
        rank = len(tensors[0].shape)
        axis = axis % rank
        rest = {t.shape[:axis] + t.shape[axis + 1 :] for t in tensors}
        if len(rest) != 1 or any(len(t.shape) != rank for t in tensors):
            raise EngineError(f"cannot concatenate shapes {[t.shape for t in tensors]} on axis {axis}")
        shape = list(tensors[0].shape)
        shape[axis] = sum(t.shape[axis] for t in tensors)
        options = {"axis": axis, "fused_activation_function": activation or "NONE"}
        return self.op("CONCATENATION", list(tensors), [shape], options)[0]

    def gather(self, params: Tensor | np.ndarray, indices: Tensor, axis: int = 0) -> Tensor:
        """GATHER slices of ``params`` along ``axis`` at int32 ``indices``: numpy's ``take``."""
        ps = _shape(params)
        axis = axis % len(ps)
        shape = (*ps[:axis], *indices.shape, *ps[axis + 1 :])
        return self.op("GATHER", [params, indices], [shape], {"axis": axis})[0]

    def embedding_lookup(self, ids: Tensor, table: Tensor | np.ndarray) -> Tensor:
        """EMBEDDING_LOOKUP: the rows of ``table`` at the 1-D int32 ``ids``."""
        if len(ids.shape) != 1:
            raise EngineError(f"embedding_lookup ids must be 1-D, got shape {ids.shape}")
        shape = (ids.shape[0], *_shape(table)[1:])
        return self.op("EMBEDDING_LOOKUP", [ids, table], [shape], dtype=table.dtype)[0]
