"""Authenticated encryption: the file format, round trips, keys, and every way a file can be cut, shuffled or
altered failing by name, with nothing written."""

from __future__ import annotations

import os
import stat
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import EngineError
from engine.cli import main
from engine.secure import decrypt_bytes, decrypt_file, encrypt_file, key_from_env, read_key_file
from engine.secure.encryption import HEADER, MAGIC, TAG_BYTES
from tests.runtimes import run_model
from tests.secure.conftest import sample_input

KEY = bytes(range(32))
CHUNK = 64


def _encrypted(tmp_path: Path, data: bytes, chunk_size: int = CHUNK, key: bytes = KEY) -> Path:
    plain, sealed = tmp_path / "plain.bin", tmp_path / "plain.enc"
    plain.write_bytes(data)
    encrypt_file(plain, sealed, key, chunk_size=chunk_size)
    return sealed


def _fails(path: Path, fragment: str, key: bytes = KEY) -> None:
    with pytest.raises(EngineError) as info:
        decrypt_bytes(path, key)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def _chunks(data: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """Header and chunks of an encrypted file."""
    body, block = data[HEADER.size :], chunk_size + TAG_BYTES
    return data[: HEADER.size], [body[i : i + block] for i in range(0, len(body), block)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), chunk_size=st.integers(16, 100))
def test_round_trip(tmp_path: Path, data: bytes, chunk_size: int) -> None:
    sealed = _encrypted(tmp_path, data, chunk_size)
    chunks = max(1, -(-len(data) // chunk_size))
    assert sealed.stat().st_size == HEADER.size + len(data) + chunks * TAG_BYTES
    assert decrypt_bytes(sealed, KEY) == data


def test_header_is_the_documented_layout(tmp_path: Path) -> None:
    first, second = _encrypted(tmp_path, b"x" * 100).read_bytes(), _encrypted(tmp_path, b"x" * 100).read_bytes()
    magic, version, chunk_size, model_id, _ = HEADER.unpack(first[: HEADER.size])
    assert HEADER.size == 60 and (magic, version, chunk_size) == (MAGIC, 1, CHUNK)
    assert first[:8] == b"LRTENC\x00\x01" and first[8:12] == struct.pack(">I", CHUNK)
    assert model_id != HEADER.unpack(second[: HEADER.size])[3]  # a new id (and so a new file key) each time
    assert first[HEADER.size :] != second[HEADER.size :]


def test_decrypted_bytes_run_in_litert_without_a_plaintext_file(model: Path, tmp_path: Path, aes_key: Path) -> None:
    key = read_key_file(aes_key)
    sealed = tmp_path / "model.tflite.enc"
    encrypt_file(model, sealed, key)
    assert model.read_bytes()[4:8] == b"TFL3" and b"TFL3" not in sealed.read_bytes()
    content = decrypt_bytes(sealed, key)
    assert content == model.read_bytes()
    expected, got = run_model(model, sample_input(), "default"), run_model(content, sample_input(), "default")
    assert all(np.array_equal(expected[name], got[name]) for name in expected)


def test_keys_from_files_and_environment(tmp_path: Path, aes_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stat.S_IMODE(aes_key.stat().st_mode) == 0o600 and aes_key.stat().st_size == 32
    key = read_key_file(aes_key)
    hex_file = tmp_path / "hex.key"
    hex_file.write_text(key.hex() + "\n")
    assert read_key_file(hex_file) == key
    monkeypatch.setenv("MODEL_KEY", key.hex())
    assert key_from_env("MODEL_KEY") == key
    for bad in (b"", b"short", key + b"\n", b"z" * 64, key * 3):
        hex_file.write_bytes(bad)
        with pytest.raises(EngineError, match="must hold 32 raw bytes or 64 hex digits"):
            read_key_file(hex_file)
    monkeypatch.setenv("MODEL_KEY", key.hex()[:-2])
    with pytest.raises(EngineError, match="64 hex digits") as info:
        key_from_env("MODEL_KEY")
    assert key.hex()[:-2] not in str(info.value)
    with pytest.raises(EngineError, match="is not set"):
        key_from_env("NO_SUCH_VARIABLE_FOR_THE_ENGINE")
    with pytest.raises(EngineError, match="32 bytes"):
        decrypt_bytes(aes_key, b"short")


def test_wrong_key_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    sealed = _encrypted(tmp_path, b"model" * 100)
    _fails(sealed, "wrong key", key=bytes(32))
    with pytest.raises(EngineError, match="wrong key"):
        decrypt_file(sealed, tmp_path / "out.bin", bytes(32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin", "plain.enc"]


def test_truncation_reordering_and_splicing_fail(tmp_path: Path) -> None:
    data = bytes(range(256)) * 2  # 8 chunks of 64
    sealed = _encrypted(tmp_path, data)
    header, chunks = _chunks(sealed.read_bytes())
    assert len(chunks) == 8

    def attempt(body: list[bytes], fragment: str, head: bytes = header) -> None:
        sealed.write_bytes(head + b"".join(body))
        _fails(sealed, fragment)

    attempt(chunks[:5], "truncated: it ends after chunk 4, which is not the last chunk")
    attempt(chunks[:0], "truncated: chunk 0 is incomplete")
    attempt([*chunks[:7], chunks[7][:-1]], "chunk 7 fails authentication")
    attempt([chunks[1], chunks[0], *chunks[2:]], "chunk 0 fails authentication")
    attempt([*chunks[:3], *chunks[4:]], "chunk 3 fails authentication")
    attempt([*chunks, chunks[7]], "chunk 7 fails authentication")
    attempt([*chunks[:7], chunks[6]], "chunk 7 fails authentication")
    other_header, other = _chunks(_encrypted(tmp_path, data).read_bytes())  # same key, another file
    attempt([other[0], *chunks[1:]], "chunk 0 fails authentication")
    attempt(chunks, "(or its header was altered)", other_header[:12] + header[12:28] + other_header[28:])
    attempt(chunks, "not an encrypted model", b"X" + header[1:])
    attempt(chunks, "format version 2", header[:6] + b"\x00\x02" + header[8:])
    attempt(chunks, "out of range", header[:8] + struct.pack(">I", 1 << 30) + header[12:])
    attempt(chunks, "chunk 0 fails authentication", header[:8] + struct.pack(">I", 65) + header[12:])
    sealed.write_bytes(b"LRT")
    _fails(sealed, "not an encrypted model")


def test_failed_decryption_leaves_no_output(tmp_path: Path) -> None:
    sealed = _encrypted(tmp_path, bytes(1000))
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1  # the last chunk: every other chunk decrypts (and is written to the temporary file) first
    sealed.write_bytes(data)
    target = tmp_path / "out.bin"
    with pytest.raises(EngineError, match="chunk 15 fails authentication"):
        decrypt_file(sealed, target, KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin", "plain.enc"]


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """32 MB through encryption and decryption in 1 MiB chunks: the Python heap peaks at a few chunks."""
    plain = tmp_path / "big.bin"
    with plain.open("wb") as f:
        for _ in range(32):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        encrypt_file(plain, tmp_path / "big.enc", KEY)
        decrypt_file(tmp_path / "big.enc", tmp_path / "big.out", KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, peak
    assert (tmp_path / "big.out").read_bytes() == plain.read_bytes()


def test_cli(model: Path, tmp_path: Path, aes_key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sealed, opened = tmp_path / "m.enc", tmp_path / "m.tflite"
    assert main(["encrypt", str(model), "-o", str(sealed), "--key-file", str(aes_key)]) == 0
    assert main(["decrypt", str(sealed), "-o", str(opened), "--key-file", str(aes_key)]) == 0
    assert opened.read_bytes() == model.read_bytes()
    out = capsys.readouterr()
    key = aes_key.read_bytes()
    assert key.hex() not in out.out + out.err and "AES-256-GCM" in out.out
    assert main(["encrypt", str(model), "-o", str(model), "--key-file", str(aes_key)]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert main(["encrypt", str(model), "-o", str(sealed), "--key-file", str(aes_key), "--chunk-size", "8"]) == 1
    assert "chunk size must be" in capsys.readouterr().err
    assert main(["keygen", "--encryption", "--out", str(aes_key)]) == 1
    assert aes_key.read_bytes() == key
