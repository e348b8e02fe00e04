"""Facts about operators and the graph: the per-op table (``ops``) and where an op's weights come from
(``weights``: constants traced through DEQUANTIZE and DENSIFY chains).
"""
