"""Authenticated encryption of model files: AES-256-GCM over fixed-size chunks, streamed in bounded memory.

File format, version 1 (integers big-endian)::

    offset  size  field
    0       6     magic b"LRTENC"
    6       2     format version (1)
    8       4     chunk size C: plaintext bytes per chunk (16 .. 64 MiB; default 1 MiB)
    12      16    model id: random, new for every encryption
    28      32    key check: bytes 32..63 of HKDF-SHA256(key, salt=model id, info=INFO, length=64)
    60      ...   chunks: chunk i is the AES-256-GCM ciphertext of plaintext bytes [i*C, (i+1)*C), then its
                  16-byte tag

Every chunk holds C plaintext bytes except the last, which holds 0..C (an empty file is one empty chunk).  The
AES key is bytes 0..31 of the same HKDF output, so each file has its own key.  Chunk i is encrypted with nonce
``i`` (8 bytes) || 0x000000 || last (1 byte: 1 for the final chunk, else 0), and associated data the 60-byte
header || ``i`` (8 bytes) || last (1 byte): a changed header, a chunk moved, dropped or taken from another file,
or a file cut at a chunk boundary, fails authentication.  The key check tells a wrong key from tampering (and
commits the file to one key).  A decryption writes nothing unless every chunk authenticates.
"""

from __future__ import annotations

import hmac
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import EngineError
from engine.secure.atomic import atomic_output, refuse_overwriting_input

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # the optional extra is missing
    raise EngineError(
        "signing and encryption need the cryptography package: pip install 'litert-engine[security]'"
    ) from exc

MAGIC = b"LRTENC"
FORMAT_VERSION = 1
HEADER = struct.Struct(">6sHI16s32s")
INFO = b"litert-engine encrypted model v1"
TAG_BYTES = 16
KEY_BYTES = 32
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK, MAX_CHUNK = 16, 1 << 26


@dataclass(frozen=True)
class Encrypted:
    """What ``encrypt_file`` wrote (the key is never part of it)."""

    path: Path
    model_id: str
    chunks: int
    chunk_size: int
    plaintext_bytes: int


def generate_key(path: str | os.PathLike[str]) -> Path:
    """Write 32 random bytes, an AES-256 key, to a new file of mode 0600 (never replacing one)."""
    path = Path(path)
    if path.exists():
        raise EngineError(f"{path} exists; keys are never overwritten (remove it or choose another name)")
    with atomic_output(path, private=True) as f:
        f.write(secrets.token_bytes(KEY_BYTES))
    return path


def _hex_key(text: bytes) -> bytes | None:
    """The key written as 64 hex digits (a final newline allowed), else None.  The text is never shown."""
    stripped = text[:-1] if text.endswith(b"\n") else text
    if len(stripped) != 2 * KEY_BYTES:
        return None
    try:
        return bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte key in a file: 32 raw bytes (``keygen --encryption``) or 64 hex digits (``openssl rand -hex
    32``)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            text = f.read(2 * KEY_BYTES + 1)
    except OSError as exc:
        raise EngineError(f"cannot read key {path}: {exc.strerror or exc}") from exc
    key = text if size == KEY_BYTES else _hex_key(text) if size <= 2 * KEY_BYTES + 1 else None
    if key is None:
        raise EngineError(f"key file {path} must hold 32 raw bytes or 64 hex digits (it has {size} bytes)")
    return key


def key_from_env(name: str) -> bytes:
    """The 32-byte key in environment variable ``name``, as 64 hex digits."""
    value = os.environ.get(name)
    if value is None:
        raise EngineError(f"environment variable {name} is not set")
    key = _hex_key(value.strip().encode("utf-8", "replace"))
    if key is None:
        raise EngineError(f"environment variable {name} must hold a 32-byte key as 64 hex digits")
    return key


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise EngineError("the key must be 32 bytes (read_key_file or key_from_env give one)")


def _derive(key: bytes, model_id: bytes) -> tuple[AESGCM, bytes]:
    """The file's own AES-256-GCM key and its key check, both from HKDF over the user's key."""
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=model_id, info=INFO).derive(bytes(key))
    return AESGCM(okm[:KEY_BYTES]), okm[KEY_BYTES:]


def _nonce_and_aad(header: bytes, index: int, last: bool) -> tuple[bytes, bytes]:
    """Chunk ``index``'s nonce and associated data, both binding its position and whether it is the last."""
    counter, flag = index.to_bytes(8, "big"), b"\x01" if last else b"\x00"
    return counter + b"\x00\x00\x00" + flag, header + counter + flag


def _open_input(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _fill(f: BinaryIO, buffer: bytearray) -> memoryview:
    """``buffer`` filled from ``f`` (less only at the end of the file), as a view of what was read.  Reading into
    two reused buffers instead of new bytes objects halves the CPU time of a large file (fewer page faults)."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        n = f.readinto(view[filled:])
        if not n:
            break
        filled += n
    return view[:filled]


def _encrypted_size(f: BinaryIO, chunk_size: int) -> int:
    """The size of the encryption of the open file ``f``: header, data, one tag per chunk (at least one)."""
    size = os.fstat(f.fileno()).st_size
    return HEADER.size + size + TAG_BYTES * max(1, -(-size // chunk_size))


def _plaintext_size(f: BinaryIO, chunk_size: int) -> int:
    """The plaintext size an encrypted file of this size holds if it is intact (checked as it is decrypted)."""
    body = os.fstat(f.fileno()).st_size - HEADER.size
    return max(0, body - TAG_BYTES * max(1, -(-body // (chunk_size + TAG_BYTES))))


def encrypt_file(
    source: str | os.PathLike[str], target: str | os.PathLike[str], key: bytes, *, chunk_size: int = DEFAULT_CHUNK
) -> Encrypted:
    """Encrypt ``source`` into ``target`` (written atomically), holding three chunks in memory at most."""
    _check_key(key)
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise EngineError(f"chunk size must be {MIN_CHUNK} .. {MAX_CHUNK} bytes, not {chunk_size}")
    refuse_overwriting_input(source, target)
    model_id = secrets.token_bytes(16)
    aead, check = _derive(key, model_id)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, chunk_size, model_id, check)
    index = total = 0
    with _open_input(source) as src, atomic_output(target, size=_encrypted_size(src, chunk_size)) as out:
        out.write(header)
        buffers = (bytearray(chunk_size), bytearray(chunk_size))
        current = _fill(src, buffers[0])
        while True:
            following = _fill(src, buffers[(index + 1) % 2])
            last = len(following) == 0
            nonce, aad = _nonce_and_aad(header, index, last)
            out.write(aead.encrypt(nonce, current, aad))
            total += len(current)
            if last:
                break
            current, index = following, index + 1
    return Encrypted(Path(target), model_id.hex(), index + 1, chunk_size, total)


def _open_encrypted(path: str | os.PathLike[str], key: bytes) -> tuple[int, Iterator[bytes]]:
    """Check the header and the key, failing before anything is written; then the plaintext size the file holds
    if it is intact, and its chunks, each yielded only once it has authenticated."""
    _check_key(key)
    f = _open_input(path)
    try:
        header = bytes(_fill(f, bytearray(HEADER.size)))
        if len(header) < HEADER.size or not header.startswith(MAGIC):
            raise EngineError(f"{path} is not an encrypted model (no {MAGIC.decode()} header)")
        _, version, chunk_size, model_id, check = HEADER.unpack(header)
        if version != FORMAT_VERSION:
            raise EngineError(f"{path}: encrypted-model format version {version}; this engine reads version 1")
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise EngineError(f"{path}: chunk size {chunk_size} in the header is out of range (altered header)")
        aead, expected = _derive(key, model_id)
        if not hmac.compare_digest(check, expected):
            raise EngineError(f"wrong key for {path} (or its header was altered): the key check does not match")
        size = _plaintext_size(f, chunk_size)
    except BaseException:
        f.close()
        raise
    return size, _decrypted_chunks(f, path, header, aead, chunk_size)


def _decrypted_chunks(
    f: BinaryIO, path: str | os.PathLike[str], header: bytes, aead: AESGCM, chunk_size: int
) -> Iterator[bytes]:
    with f:
        buffers = (bytearray(chunk_size + TAG_BYTES), bytearray(chunk_size + TAG_BYTES))
        current, index = _fill(f, buffers[0]), 0
        while True:
            following = _fill(f, buffers[(index + 1) % 2])
            last = len(following) == 0
            if len(current) < TAG_BYTES:
                raise EngineError(f"{path} is truncated: chunk {index} is incomplete")
            nonce, aad = _nonce_and_aad(header, index, last)
            try:
                plaintext = aead.decrypt(nonce, current, aad)
            except InvalidTag:
                raise EngineError(_chunk_failure(aead, header, path, index, current, last)) from None
            yield plaintext
            if last:
                return
            current, index = following, index + 1


def _chunk_failure(
    aead: AESGCM, header: bytes, path: str | os.PathLike[str], index: int, data: memoryview, last: bool
) -> str:
    """Why chunk ``index`` failed: cut short after it (it authenticates as a middle chunk), or altered."""
    if last:
        nonce, aad = _nonce_and_aad(header, index, False)
        try:
            aead.decrypt(nonce, data, aad)
        except InvalidTag:
            pass
        else:
            return f"{path} is truncated: it ends after chunk {index}, which is not the last chunk"
    return f"{path}: chunk {index} fails authentication: the file was altered, reordered or truncated"


def decrypt_file(source: str | os.PathLike[str], target: str | os.PathLike[str], key: bytes) -> int:
    """Decrypt ``source`` into ``target`` in bounded memory; ``target`` appears only if every chunk
    authenticated.  Returns the plaintext size."""
    refuse_overwriting_input(source, target)
    size, chunks = _open_encrypted(source, key)
    with atomic_output(target, size=size) as out:
        for chunk in chunks:
            out.write(chunk)
    return size


def decrypt_bytes(path: str | os.PathLike[str], key: bytes) -> bytes:
    """The decrypted model, in memory only: ``Interpreter(model_content=decrypt_bytes(path, key))`` runs it
    without writing the plaintext to disk."""
    return b"".join(_open_encrypted(path, key)[1])
