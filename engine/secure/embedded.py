"""Signatures embedded in the .tflite file: a metadata entry holding a ``model_signing`` bundle.

The bundle signs the model's canonical content, the model without that entry:

1. read the file and remove the metadata entry named ``SIGNATURE_ENTRY`` (a signed file has exactly one, the
   last entry); if no metadata entry remains, the model has no ``metadata`` field at all;
2. serialize what remains with the engine's writer, equal vectors each written on its own
   (``engine.model_to_bytes(model, share_equal_vectors=False)``: the writer's layout before it shared them, so
   models signed before verify the same);
3. the SHA-256 of those bytes is the digest of the statement's single resource ``"."``.

So re-signing gives the same content digest, and the bundle with the canonical bytes saved as a file is an
ordinary ``model_signing`` signature of that file.  The signed file itself is written in that layout, and
verification requires it to be exactly what the writer produces for it so (``model_to_bytes(read_model(file),
share_equal_vectors=False)``): bytes the reader would skip (alignment padding, unreferenced space) cannot change
unnoticed.  Nothing here needs ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.files import file_digest
from engine.format.ir import Buffer, Metadata, Model
from engine.format.reader import read_model
from engine.format.writer import model_pieces, write_model
from engine.secure.bundle import SIGNATURE_ENTRY, Statement, VerificationError, parse_bundle, parse_statement


def content_digest(model: Model) -> str:
    """SHA-256 (hex) of the model in the canonical layout, hashed piece by piece (no joined copy)."""
    digest = hashlib.sha256()
    for piece in model_pieces(model, share_equal_vectors=False):
        digest.update(piece)
    return digest.hexdigest()


def take_signature(model: Model, *, strict: bool) -> bytes | None:
    """Remove the signature entry from ``model`` (leaving its canonical content) and return the bundle bytes,
    or None when it has none.  ``strict`` (verification) refuses a second entry or one that is not last."""
    entries = model.metadata or []
    found = [i for i, entry in enumerate(entries) if entry.name == SIGNATURE_ENTRY]
    if strict and len(found) > 1:
        raise VerificationError("malformed bundle", f"{len(found)} {SIGNATURE_ENTRY!r} metadata entries")
    if strict and found and found[-1] != len(entries) - 1:
        raise VerificationError("malformed bundle", f"the {SIGNATURE_ENTRY!r} entry is not the last metadata entry")
    model.metadata = [entry for entry in entries if entry.name != SIGNATURE_ENTRY] or None
    if not found:
        return None
    buffer = entries[found[-1]].buffer
    return b"" if buffer is None else buffer.data.tobytes()


def canonical_content(path: str | os.PathLike[str]) -> Model:
    """The model at ``path`` without a signature entry it may hold: what an embedded signature signs."""
    model = read_model(path)
    take_signature(model, strict=False)
    return model


def write_signed(content: Model, bundle: bytes, target: str | os.PathLike[str]) -> None:
    """Write ``content`` (a canonical content) with ``bundle`` as its signature entry to ``target``."""
    entry = Metadata(SIGNATURE_ENTRY, Buffer(np.frombuffer(bundle, np.uint8).copy()))
    content.metadata = [*(content.metadata or []), entry]
    write_model(content, target, share_equal_vectors=False)


def read_signed(path: str | os.PathLike[str]) -> tuple[Model, bytes]:
    """The canonical content of the signed model at ``path`` and its embedded bundle bytes.

    Fails, naming why, if the file is not a model, has no embedded signature, or is not byte for byte the
    writer's form of what it holds.
    """
    digest = file_digest(path)  # first, so that an unreadable file is not reported as a malformed model
    try:
        model = read_model(path)
    except EngineError as exc:
        raise VerificationError("malformed model", str(exc)) from None
    if not any(entry.name == SIGNATURE_ENTRY for entry in model.metadata or ()):
        raise VerificationError("no signature", f"{path} has no embedded signature (metadata {SIGNATURE_ENTRY!r})")
    if content_digest(model) != digest:
        raise VerificationError(
            "digest mismatch",
            f"{path} is not byte for byte the canonical layout of what it holds: it was changed after signing",
        )
    raw = take_signature(model, strict=True)
    assert raw is not None
    return model, raw


def check_content(model: Model, statement: Statement, path: str | os.PathLike[str]) -> None:
    """Compare the canonical content's digest with the signed one."""
    actual = content_digest(model)
    if actual != statement.digest:
        raise VerificationError(
            "digest mismatch",
            f"the content of {path} has SHA-256 {actual}, the signature was made over {statement.digest}: "
            "the model was changed after signing",
        )


def describe(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What ``inspect`` shows of an embedded signature, or None when the model has none: the signer's key hint,
    the recorded name, and whether the content still matches the signed digest.  Without the public key this
    cannot tell who signed; ``verify --key`` does."""
    try:
        model, raw = read_signed(path)
    except VerificationError as exc:
        if exc.reason == "no signature":
            return None
        return {"entry": SIGNATURE_ENTRY, "signer_key_sha256": None, "subject": None, "status": str(exc)}
    facts: dict[str, Any] = {"entry": SIGNATURE_ENTRY, "signer_key_sha256": None, "subject": None}
    try:
        bundle = parse_bundle(raw, f"the {SIGNATURE_ENTRY!r} entry")
        facts["signer_key_sha256"] = bundle.key_hint
        statement = parse_statement(bundle.payload)
        facts["subject"] = statement.name
        check_content(model, statement, path)
    except VerificationError as exc:
        facts["status"] = str(exc)
    else:
        facts["status"] = "content intact (signer not checked: run verify --key PUBLIC_KEY)"
    return facts
