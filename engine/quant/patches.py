"""The input vectors a weighted layer multiplies its weight rows with (im2col), in the weight's row order.

A convolution's output pixel is a weight row (kh x kw x C_in, TFLite's OHWI filter flattened) times the input
patch under it; data-aware rounding needs those patches.  Padding follows TFLite: SAME pads (total
``(out - 1) * stride + (k - 1) * dilation + 1 - in``, the smaller half first), VALID none.
"""

from __future__ import annotations

import numpy as np


def conv_patches(
    x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], same: bool
) -> np.ndarray:
    """NHWC input -> [N, out_h, out_w, kh, kw, C] patches (a strided view where possible: copy before writing)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    extent_h, extent_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if same:
        pads = []
        for size, s, extent in ((x.shape[1], sh, extent_h), (x.shape[2], sw, extent_w)):
            out = -(-size // s)
            total = max((out - 1) * s + extent - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (extent_h, extent_w), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, out_h, out_w, C, kh, kw]
    return windows.transpose(0, 1, 2, 4, 5, 3)


def sample_rows(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of the rows (axis 0), drawn without replacement: bounds the cost per sample."""
    if rows.shape[0] <= limit:
        return rows
    return rows[np.sort(rng.choice(rows.shape[0], limit, replace=False))]


def transposed_conv_patches(
    x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], output_size: tuple[int, int], same: bool
) -> np.ndarray:
    """NHWC input of a TRANSPOSE_CONV -> [N, out_h, out_w, kh, kw, C]: what each output pixel's weight row
    (OHWI filter flattened) multiplies (a strided view: copy before writing).

    Input pixel i reaches output y through tap ky = y + pad - i * stride, the padding being the one the forward
    convolution from the output's size would use.  Spread with stride - 1 zeros between pixels and framed so that
    tap ky of output y sits at y + kh - 1 - ky, the input's plain patches, taps reversed, are those vectors."""
    places = [
        _spread(n, s, k, size, same) for n, s, k, size in zip(x.shape[1:3], stride, kernel, output_size, strict=True)
    ]
    (rows, keep_rows, height), (columns, keep_columns, width) = places
    spread = np.zeros((x.shape[0], height, width, x.shape[3]), x.dtype)
    spread[:, rows[:, None], columns] = x[:, keep_rows][:, :, keep_columns]
    return conv_patches(spread, kernel, (1, 1), (1, 1), same=False)[:, :, :, ::-1, ::-1]


def _spread(length: int, stride: int, kernel: int, size: int, same: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Along one axis: where the input's pixels land in the spread input (those that land in it), which pixels
    those are, and its length (output size + kernel - 1)."""
    pad = max((-(-size // stride) - 1) * stride + kernel - size, 0) // 2 if same else 0
    extent = size + kernel - 1
    places = np.arange(length) * stride + kernel - 1 - pad
    keep = (places >= 0) & (places < extent)
    return places[keep], keep, extent
