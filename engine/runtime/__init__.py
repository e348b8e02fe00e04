"""Everything that runs a model in LiteRT (the optional ``ai-edge-litert`` dependency): the interpreter in its
two runtimes (``litert``), validation against a reference, calibration, and latency.
"""
