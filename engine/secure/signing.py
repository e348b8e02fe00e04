"""Sign and verify models with ECDSA keys, in the OpenSSF ``model_signing`` bundle format.

A detached signature (``MODEL.sig``) signs the file's bytes exactly as ``model_signing``'s private-key signer
does, so either tool verifies what the other signed.  An embedded one signs the model's canonical content
(engine.secure.embedded, imported where used: it reads and writes models, which needs numpy and the format layer,
so detached signatures start without them).  The primitives are the ``cryptography`` package's; this module only
arranges them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from engine.files import file_digest
from engine.secure.atomic import atomic_output, refuse_overwriting_input
from engine.secure.bundle import (
    MAX_BUNDLE_BYTES,
    SIGNATURE_ENTRY,
    Bundle,
    VerificationError,
    pae,
    parse_bundle,
    parse_statement,
    statement_payload,
)

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
except ImportError as exc:  # the optional extra is missing
    raise EngineError(
        "signing and encryption need the cryptography package: pip install 'litert-engine[security]'"
    ) from exc

# The curves model_signing accepts, each with the hash it signs with.
_CURVES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
MAX_KEY_BYTES = 1 << 16


@dataclass(frozen=True)
class Verified:
    """A signature that verified: where it was, who signed (the SHA-256 of the public key PEM, as
    ``model_signing`` records it), the signed digest and the name the signer recorded."""

    model: Path
    signature: str
    key_sha256: str
    digest: str
    subject: str


def public_key_path(private_key: str | os.PathLike[str]) -> Path:
    """Where ``keygen`` puts the public half: ``NAME.pub.pem`` beside ``NAME.pem``, else ``KEY.pub``."""
    path = Path(private_key)
    return path.with_suffix(".pub.pem") if path.suffix == ".pem" else path.with_name(path.name + ".pub")


def generate_keypair(private_key: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new ECDSA P-256 key pair: the private key (PKCS#8 PEM, mode 0600) at ``private_key`` and the public
    key (SubjectPublicKeyInfo PEM) at ``public_key_path(private_key)``.  Existing files are never replaced."""
    private_path, public_path = Path(private_key), public_key_path(private_key)
    for path in (private_path, public_path):
        if path.exists():
            raise EngineError(f"{path} exists; keys are never overwritten (remove it or choose another name)")
    key = ec.generate_private_key(ec.SECP256R1())
    with atomic_output(private_path, private=True) as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    try:
        with atomic_output(public_path, private=True) as f:
            f.write(_public_pem(key.public_key()))
        os.chmod(public_path, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_KEY_BYTES:
            raise EngineError(f"{path} is {size:,} bytes, too large for a PEM key")
        return Path(path).read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read key {path}: {exc.strerror or exc}") from exc


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, path: str | os.PathLike[str]) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise EngineError(f"{path} is not an elliptic-curve (ECDSA) key")
    if key.curve.name not in _CURVES:
        raise EngineError(f"{path} is an ECDSA key on {key.curve.name}; use P-256, P-384 or P-521")


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA private key (P-256, P-384 or P-521), as ``keygen`` or ``openssl`` writes it."""
    data = _read_key_file(path)
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise EngineError(f"{path} is a public key; signing needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise EngineError(f"{path} is password-protected; the engine reads unencrypted PEM keys") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EngineError(f"{path} is not a PEM private key ({_first_line(exc)})") from None
    _check_curve(key, path)
    return key


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """A PEM ECDSA public key (SubjectPublicKeyInfo), as ``keygen`` or ``openssl ec -pubout`` writes it."""
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        raise EngineError(f"{path} is a private key; verify with the public key (keygen wrote it beside it)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EngineError(f"{path} is not a PEM public key ({_first_line(exc)})") from None
    _check_curve(key, path)
    return key


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_sha256(key: ec.EllipticCurvePublicKey) -> str:
    """The key's fingerprint as ``model_signing`` records it in a bundle: SHA-256 of its PEM (hex)."""
    return hashlib.sha256(_public_pem(key)).hexdigest()


def _signing_key(key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePrivateKey:
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else load_private_key(key)


def _bundle(key: ec.EllipticCurvePrivateKey, name: str, digest: str) -> bytes:
    """A signed bundle stating that the model ``name`` has SHA-256 ``digest``."""
    payload = statement_payload(name, digest)
    signature = key.sign(pae(payload), ec.ECDSA(_CURVES[key.curve.name]()))
    return Bundle(payload, signature, key_sha256(key.public_key())).to_json()


def sign_file(
    model: str | os.PathLike[str],
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey,
    output: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a detached signature of ``model``'s bytes (default ``MODEL.sig``), reading the file in bounded
    memory; returns its path.  ``key`` is a PEM path or a loaded private key."""
    model = Path(model)
    target = Path(output) if output is not None else model.with_name(model.name + ".sig")
    refuse_overwriting_input(model, target)
    signing_key = _signing_key(key)
    bundle = _bundle(signing_key, model.name, file_digest(model))
    with atomic_output(target) as f:
        f.write(bundle)
    return target


def signed_model_path(model: str | os.PathLike[str]) -> Path:
    """The default output of ``sign --embed``: ``NAME.signed.tflite`` beside ``NAME.tflite``."""
    model = Path(model)
    return model.with_name(f"{model.stem}.signed{model.suffix or '.tflite'}")


def sign_embedded(
    model: str | os.PathLike[str],
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey,
    output: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` with its signature inside (default ``NAME.signed.tflite``); returns its path.  A
    signature already embedded is replaced: the canonical content, and so its digest, is the same."""
    model = Path(model)
    target = Path(output) if output is not None else signed_model_path(model)
    refuse_overwriting_input(model, target)
    signing_key = _signing_key(key)
    from engine.secure import embedded

    content = embedded.canonical_content(model)
    embedded.write_signed(content, _bundle(signing_key, target.name, embedded.content_digest(content)), target)
    return target


def _authenticate(raw: bytes, source: str, public_key: ec.EllipticCurvePublicKey, key_name: str) -> Bundle:
    """The bundle in ``raw`` if it is well formed and signed by ``public_key``."""
    bundle = parse_bundle(raw, source)
    expected = key_sha256(public_key)
    try:
        public_key.verify(bundle.signature, pae(bundle.payload), ec.ECDSA(_CURVES[public_key.curve.name]()))
    except InvalidSignature:
        if bundle.key_hint != expected:
            raise VerificationError(
                "wrong key",
                f"the signature was made with key sha256:{bundle.key_hint[:16]}..., not {key_name} "
                f"(sha256:{expected[:16]}...)",
            ) from None
        raise VerificationError(
            "bad signature", f"the signature in {source} does not verify with {key_name}: the bundle was altered"
        ) from None
    if bundle.key_hint != expected:
        raise VerificationError("malformed bundle", f"the key hint in {source} was altered (it is not {key_name}'s)")
    return bundle


def _read_signature(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise VerificationError(
                "malformed bundle", f"{path} holds {size:,} bytes, more than a signature bundle ({MAX_BUNDLE_BYTES:,})"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise VerificationError("no signature", f"{path} does not exist") from None
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc


def verify_file(
    model: str | os.PathLike[str], public_key: str | os.PathLike[str], signature: str | os.PathLike[str] | None = None
) -> Verified:
    """Check a detached signature (default ``MODEL.sig``) of ``model``'s bytes with ``public_key`` (a PEM path);
    raise VerificationError naming what failed."""
    model = Path(model)
    sig_path = Path(signature) if signature is not None else model.with_name(model.name + ".sig")
    key = load_public_key(public_key)
    bundle = _authenticate(_read_signature(sig_path), str(sig_path), key, str(public_key))
    statement = parse_statement(bundle.payload)
    actual = file_digest(model)
    if actual != statement.digest:
        raise VerificationError(
            "digest mismatch",
            f"{model} has SHA-256 {actual}, the signature was made over {statement.digest}: "
            "the model was changed after signing",
        )
    return Verified(model, str(sig_path), bundle.key_hint, statement.digest, statement.name)


def verify_embedded(model: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> Verified:
    """Check the signature embedded in ``model`` with ``public_key`` (a PEM path); raise VerificationError naming
    what failed."""
    key = load_public_key(public_key)
    from engine.secure import embedded

    content, raw = embedded.read_signed(model)
    bundle = _authenticate(raw, f"the {SIGNATURE_ENTRY!r} entry", key, str(public_key))
    statement = parse_statement(bundle.payload)
    embedded.check_content(content, statement, model)
    return Verified(Path(model), f"embedded ({SIGNATURE_ENTRY})", bundle.key_hint, statement.digest, statement.name)


def verify(
    model: str | os.PathLike[str], public_key: str | os.PathLike[str], signature: str | os.PathLike[str] | None = None
) -> Verified:
    """Check ``model``'s signature: the detached one given, else ``MODEL.sig`` if it exists, else the embedded one."""
    default = Path(model).with_name(Path(model).name + ".sig")
    if signature is not None or default.exists():
        return verify_file(model, public_key, signature)
    return verify_embedded(model, public_key)
