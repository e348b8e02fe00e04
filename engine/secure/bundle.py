"""The OpenSSF ``model_signing`` signature format, as its 1.x releases write it for private-key signing.

A signature is a Sigstore bundle (JSON) holding a DSSE envelope whose payload is an in-toto statement listing
each signed file's SHA-256 digest.  A model that is one file is the resource named ``"."``; the statement's
subject is the model's file name (informative) with, as digest, the SHA-256 of the resource digests.

Parsing is strict on purpose: the bundle must be byte for byte the compact JSON ``model_signing`` writes, and
every field the signature does not cover is either fixed or checked against the key, so that changing any
byte of a signature file is detected, never accepted.  Nothing here needs the ``cryptography`` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError

# The metadata entry that holds a bundle inside a .tflite (engine.secure.embedded).
SIGNATURE_ENTRY = "litert_engine.signature.v1"

MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# model_signing names the one resource of a single-file model "." (the file relative to itself).
SINGLE_FILE = "."
# A single-file bundle is about 1.5 KB; a file much larger than any bundle is refused before it is parsed.
MAX_BUNDLE_BYTES = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class VerificationError(EngineError):
    """Why a signature does not verify: ``reason`` is one of "no signature", "malformed bundle", "malformed model",
    "wrong key", "bad signature" or "digest mismatch"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"verification failed: {reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Bundle:
    """What a bundle carries: the signed payload, the DSSE signature over it, and the signer's key hint (the
    SHA-256 of its public key in PEM form)."""

    payload: bytes
    signature: bytes
    key_hint: str

    def to_json(self) -> bytes:
        """The bundle in the compact JSON form ``model_signing`` writes (no trailing newline)."""
        document = {
            "mediaType": MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.key_hint}, "tlogEntries": []},
            "dsseEnvelope": {
                "payload": base64.b64encode(self.payload).decode(),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(self.signature).decode(), "keyid": ""}],
            },
        }
        return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Statement:
    """The signed claim: the model's recorded name and the SHA-256 of its bytes."""

    name: str
    digest: str


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of an in-toto payload: the bytes the signature is made over."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def statement_payload(name: str, digest: str) -> bytes:
    """The in-toto statement ``model_signing`` makes for a single-file model whose SHA-256 is ``digest``."""
    root = hashlib.sha256(bytes.fromhex(digest)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False},
            "resources": [{"name": SINGLE_FILE, "algorithm": "sha256", "digest": digest}],
        },
    }
    return json.dumps(statement, indent=2).encode()


def _malformed(detail: str) -> VerificationError:
    return VerificationError("malformed bundle", detail)


def _field(document: Any, path: str, kind: type) -> Any:
    """The value at a dotted ``path`` (list items as ``[0]``), which must be a ``kind``."""
    shown = path.replace(".[", "[")
    value = document
    for part in path.split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(value, list) or len(value) <= index:
                raise _malformed(f"no {shown}")
            value = value[index]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise _malformed(f"no {shown}")
    if not isinstance(value, kind):
        raise _malformed(f"{shown} is not a {kind.__name__}")
    return value


def _brief(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


def _base64(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{path} is not base64") from None


def parse_bundle(raw: bytes, source: str) -> Bundle:
    """The bundle in ``raw`` (read from ``source``, named in errors), refused unless it is exactly what
    ``Bundle.to_json`` writes for its content."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise _malformed(f"{source} holds {len(raw):,} bytes, more than a signature bundle ({MAX_BUNDLE_BYTES:,})")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _malformed(f"{source} is not JSON ({_brief(exc)})") from None
    if not isinstance(document, dict):
        raise _malformed(f"{source} is not a JSON object")
    media_type = _field(document, "mediaType", str)
    if media_type != MEDIA_TYPE:
        raise _malformed(f"media type {media_type!r}, expected {MEDIA_TYPE!r}")
    material = _field(document, "verificationMaterial", dict)
    if "publicKey" not in material:
        found = ", ".join(sorted(k for k in material if k != "tlogEntries")) or "nothing"
        raise _malformed(f"the bundle is not signed with a private key (its verification material holds {found})")
    hint = _field(document, "verificationMaterial.publicKey.hint", str)
    if not _HEX64.fullmatch(hint):
        raise _malformed("verificationMaterial.publicKey.hint is not a SHA-256 in hex")
    if _field(document, "verificationMaterial.tlogEntries", list):
        raise _malformed("the bundle has transparency log entries; the engine verifies private-key signatures")
    payload_type = _field(document, "dsseEnvelope.payloadType", str)
    if payload_type != PAYLOAD_TYPE:
        raise _malformed(f"payload type {payload_type!r}, expected {PAYLOAD_TYPE!r}")
    signatures = _field(document, "dsseEnvelope.signatures", list)
    if len(signatures) != 1:
        raise _malformed(f"{len(signatures)} signatures in the envelope, expected 1")
    if _field(document, "dsseEnvelope.signatures.[0].keyid", str):
        raise _malformed("dsseEnvelope.signatures[0].keyid is not empty")
    bundle = Bundle(
        payload=_base64(_field(document, "dsseEnvelope.payload", str), "dsseEnvelope.payload"),
        signature=_base64(_field(document, "dsseEnvelope.signatures.[0].sig", str), "dsseEnvelope.signatures[0].sig"),
        key_hint=hint,
    )
    if bundle.to_json() != raw:
        raise _malformed(
            f"{source} is not in the exact form model_signing writes (bytes were added, removed or changed)"
        )
    return bundle


def parse_statement(payload: bytes) -> Statement:
    """The single-file model a signed payload describes, checked as ``model_signing`` checks it."""
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _malformed(f"the signed payload is not JSON ({_brief(exc)})") from None
    if not isinstance(statement, dict):
        raise _malformed("the signed payload is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise _malformed(f"statement type {statement.get('_type')!r}, expected {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise _malformed(f"predicate type {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}")
    subjects = _field(statement, "subject", list)
    if len(subjects) != 1:
        raise _malformed(f"{len(subjects)} subjects in the statement, expected 1")
    name = _field(statement, "subject.[0].name", str)
    root = _field(statement, "subject.[0].digest.sha256", str)
    method = _field(statement, "predicate.serialization.method", str)
    hash_type = _field(statement, "predicate.serialization.hash_type", str)
    if (method, hash_type) != ("files", "sha256"):
        raise _malformed(
            f"serialization {method!r} with {hash_type!r}; the engine verifies model_signing's default "
            "('files' with 'sha256')"
        )
    resources = _field(statement, "predicate.resources", list)
    digests = []
    for i in range(len(resources)):
        algorithm = _field(statement, f"predicate.resources.[{i}].algorithm", str)
        digest = _field(statement, f"predicate.resources.[{i}].digest", str)
        if algorithm != "sha256" or not _HEX64.fullmatch(digest):
            raise _malformed(f"resource {i} is not a SHA-256 digest in hex")
        digests.append(digest)
    if hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests)).hexdigest() != root:
        raise _malformed("the statement's root digest does not match its resources")
    names = [_field(statement, f"predicate.resources.[{i}].name", str) for i in range(len(resources))]
    if names != [SINGLE_FILE]:
        raise _malformed(
            f"the signature covers {len(names)} files of a directory; the engine verifies single-file signatures "
            "(verify directories with model_signing)"
        )
    return Statement(name=name, digest=digests[0])
