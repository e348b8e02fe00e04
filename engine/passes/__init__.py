"""Compression passes: each a function ``(Model, Recipe) -> (Model, [TensorReport])`` that edits the model.

A pass only touches the weights whose resolved recipe mode is its own, so passes compose: the API runs each
in turn on the same model.
"""
