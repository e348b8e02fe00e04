"""The security commands of ``python -m engine``: keygen, sign, verify, encrypt, decrypt; ``compress --sign``;
the signature line of ``inspect``.  Importing this module imports neither ``cryptography`` nor numpy: the commands
stream bytes, and start-up is much of their time on small models (benchmarks/secure.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import secure
from engine.secure.bundle import SIGNATURE_ENTRY

if TYPE_CHECKING:
    from engine.format.ir import Model

COMMANDS = ("keygen", "sign", "verify", "encrypt", "decrypt")

_KEY_SOURCES = "the 32-byte key: --key-file FILE (32 raw bytes or 64 hex digits) or --key-env VARIABLE (64 hex digits)"


def _keygen(args: argparse.Namespace) -> int:
    if args.encryption:
        path = secure.generate_key(args.out)
        print(
            f"wrote {path}: a 32-byte AES-256 key (mode 0600); keep it secret, use it with encrypt/decrypt --key-file"
        )
        return 0
    private, public = secure.generate_keypair(args.out)
    fingerprint = secure.key_sha256(secure.load_public_key(public))
    print(f"wrote {private}: ECDSA P-256 private key (mode 0600); keep it secret, sign with --key {private}")
    print(f"wrote {public}: its public key (sha256:{fingerprint}); share it, verify with --key {public}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    if args.embed:
        path = secure.sign_embedded(args.model, args.key, args.out)
        print(f"wrote {path}: {args.model} with its signature embedded (metadata {SIGNATURE_ENTRY!r})")
    else:
        path = secure.sign_file(args.model, args.key, args.out)
        print(f"wrote {path}: model_signing signature of {args.model}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    result = secure.verify(args.model, args.key, args.sig)
    print(
        f"verified: {result.model} matches its signature ({result.signature}); signed by key "
        f"sha256:{result.key_sha256}; content sha256 {result.digest}"
    )
    return 0


def _symmetric_key(args: argparse.Namespace) -> bytes:
    return secure.read_key_file(args.key_file) if args.key_file else secure.key_from_env(args.key_env)


def _encrypt(args: argparse.Namespace) -> int:
    done = secure.encrypt_file(args.model, args.output, _symmetric_key(args), chunk_size=args.chunk_size)
    print(
        f"wrote {done.path}: {done.plaintext_bytes:,} bytes encrypted with AES-256-GCM in {done.chunks} chunk(s) "
        f"of {done.chunk_size:,} bytes, model id {done.model_id}"
    )
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    size = secure.decrypt_file(args.model, args.output, _symmetric_key(args))
    print(f"wrote {args.output}: {size:,} bytes, every chunk authenticated")
    return 0


def _key_flags(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-file", metavar="FILE", help="the 32-byte key in a file (keygen --encryption)")
    source.add_argument("--key-env", metavar="VARIABLE", help="the key as 64 hex digits in this environment variable")


def add_parsers(commands: Any) -> None:
    """Add the ``COMMANDS`` to the ``python -m engine`` subcommands."""
    p = commands.add_parser("keygen", help="make an ECDSA P-256 key pair for signing (or an encryption key)")
    p.add_argument(
        "--out",
        required=True,
        metavar="KEY",
        help="private key file; the public key goes to KEY.pub (X.pem: X.pub.pem)",
    )
    p.add_argument("--encryption", action="store_true", help="write a 32-byte AES-256 key for encrypt/decrypt instead")
    p.set_defaults(run=_keygen)

    p = commands.add_parser("sign", help="sign a model (OpenSSF model_signing format)")
    p.add_argument("model")
    p.add_argument("--key", required=True, metavar="KEY", help="PEM ECDSA private key (P-256, P-384 or P-521)")
    p.add_argument(
        "--out", metavar="PATH", help="output: the signature (default MODEL.sig), or with --embed the signed model"
    )
    p.add_argument(
        "--embed",
        action="store_true",
        help="write the model with the signature inside it (default output NAME.signed.tflite)",
    )
    p.set_defaults(run=_sign)

    p = commands.add_parser("verify", help="check a model's signature (exit 1 naming what failed)")
    p.add_argument("model")
    p.add_argument("--key", required=True, metavar="PUB.pem", help="the signer's PEM public key")
    p.add_argument(
        "--sig", metavar="MODEL.sig", help="detached signature (default: MODEL.sig if it exists, else the embedded one)"
    )
    p.set_defaults(run=_verify)

    p = commands.add_parser("encrypt", help="encrypt a model with AES-256-GCM (chunked, authenticated)")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    _key_flags(p)
    p.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="plaintext bytes per authenticated chunk (default 1 MiB)",
    )
    p.set_defaults(run=_encrypt)

    p = commands.add_parser("decrypt", help="decrypt an encrypted model (nothing is written unless it authenticates)")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    _key_flags(p)
    p.set_defaults(run=_decrypt)


def add_sign_flag(p: argparse.ArgumentParser) -> None:
    """``compress --sign KEY``."""
    p.add_argument("--sign", metavar="KEY", help="sign the output with this PEM private key (writes OUTPUT.sig)")


def signing_key(args: argparse.Namespace) -> Any:
    """The ``--sign`` key, loaded before any work so that a bad key fails before an output is written."""
    return None if args.sign is None else secure.load_private_key(args.sign)


def sign_output(output: str | Path, key: Any) -> None:
    """Sign what ``compress`` wrote, when ``--sign`` was given."""
    if key is not None:
        print(f"signed: {secure.sign_file(output, key)}")


def signature_summary(path: str | Path, model: Model) -> dict[str, Any] | None:
    """What ``inspect`` shows of an embedded signature (None when there is none)."""
    if not any(entry.name == SIGNATURE_ENTRY for entry in model.metadata or ()):
        return None
    from engine.secure.embedded import describe  # reads and re-serializes the model: only for signed ones

    return describe(path)
