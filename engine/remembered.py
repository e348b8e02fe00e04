"""Results of pure computations remembered for a caller that repeats them on copies of one model.

The accuracy search compresses the same float model dozens of times (engine.accuracy.candidates.Builder), each
build from a fresh copy of the model whose constant arrays are shared and read-only.  While the caller holds
`remembering` open, `remembered` computes an array once per key (the caller's dict keeps them, and so decides how
long) and hands back the same read-only array each time: a pass that wanted to edit it in place fails loudly
instead of changing what the next build gets.  `digest` hashes an array's bytes, once per immutable array
memory within the block.  Outside the block every call computes: nothing is kept between a user's compress runs.
Keys name what the result depends on, content hashes included: a key built from two equal inputs may differ
(a miss costs one computation), two different inputs never share one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_MEMO: ContextVar[dict[Hashable, object] | None] = ContextVar("remembered", default=None)


@contextmanager
def remembering(memo: dict[Hashable, object]) -> Iterator[None]:
    """Within the block, `remembered` keeps its results in ``memo`` and takes them from there."""
    token = _MEMO.set(memo)
    try:
        yield
    finally:
        _MEMO.reset(token)


def remembered(key: Callable[[], Hashable], compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """``compute()``, or the (read-only) result it gave for the same ``key()`` within the open `remembering`
    block (the key is built only when one is open)."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    k = key()
    if k not in memo:
        value = compute()
        memo[k] = None if value is None else _frozen(value)
    return memo[k]  # type: ignore[return-value]


def digest(array: np.ndarray) -> bytes:
    """The sha256 of ``array``'s bytes (C order).  Within an open `remembering` block, an array whose memory
    cannot change (read-only down to its owner) is hashed once per memory: the memo keeps the array, so its
    address is not reused while the entry lives."""
    memo = _MEMO.get()
    if memo is None or not immutable(array):
        return hashlib.sha256(np.ascontiguousarray(array)).digest()
    where = ("digest", array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
    if where not in memo:
        memo[where] = (array, hashlib.sha256(np.ascontiguousarray(array)).digest())
    return memo[where][1]  # type: ignore[index]


def _frozen(value: np.ndarray) -> np.ndarray:
    """``value`` in immutable memory (a view of bytes), so `digest` can remember it too."""
    value = np.ascontiguousarray(value)
    return np.frombuffer(value.tobytes(), value.dtype).reshape(value.shape)


def immutable(array: np.ndarray) -> bool:
    """Whether no one can write ``array``'s memory: no writeable array on its base chain, and an owner that is
    not a numpy array (one could set it writeable again) exposing read-only memory (bytes, a read-only mmap)."""
    owner: object = array
    while isinstance(owner, np.ndarray):
        if owner.flags.writeable:
            return False
        if owner.base is None:
            return False
        owner = owner.base
    try:
        return memoryview(owner).readonly  # type: ignore[arg-type]
    except TypeError:
        return False
