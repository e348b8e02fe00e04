"""The file format layer: the TFLite schema as data, the IR dataclasses, and the reader and writer between them.

Nothing here knows about compression: passes edit a ``Model`` and hand it back to the writer.  ``builder``
makes small float models from numpy arrays (tests, examples); ``sparse`` is TFLite's sparse tensor encoding.
"""
