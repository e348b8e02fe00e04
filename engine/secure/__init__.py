"""Model security: signatures in the OpenSSF ``model_signing`` format (detached or embedded in the .tflite) and
authenticated encryption (AES-256-GCM, chunked).  docs/cli.md describes the formats, docs/security.md the threat
model.

The functions come from modules that need the ``cryptography`` package (the ``security`` extra); they are
imported on first use, so ``import engine.secure`` always works and a missing package is one EngineError naming
the install command.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.secure.bundle import VerificationError

_EXPORTS = {
    "signing": (
        "Verified",
        "generate_keypair",
        "key_sha256",
        "load_private_key",
        "load_public_key",
        "public_key_path",
        "sign_embedded",
        "sign_file",
        "signed_model_path",
        "verify",
        "verify_embedded",
        "verify_file",
    ),
    "encryption": (
        "Encrypted",
        "decrypt_bytes",
        "decrypt_file",
        "encrypt_file",
        "generate_key",
        "key_from_env",
        "read_key_file",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import the signing or encryption module when one of its names is first used."""
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"engine.secure.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'engine.secure' has no attribute {name!r}")


__all__ = ["VerificationError", *sorted(_MODULE_OF)]
