"""Quantization math, with no graph in sight: uniform weight quantization (``uniform``), the Numba kernels and
their numpy twins (``kernels``), activation range observers, pruning masks, and the error metrics reports use.
"""
