"""Interoperability with the OpenSSF ``model_signing`` package (1.1.1), both ways, through its Python API and
its command line: a signature made here verifies there, one made there verifies here, and each side rejects what
the other would."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine import model_to_bytes, read_model
from engine.cli import main
from engine.secure import VerificationError, sign_embedded, sign_file, verify_file
from engine.secure.embedded import take_signature


def _their_verify(model: Path, sig: Path, public: Path) -> None:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(model, sig)


def _their_sign(model: Path, sig: Path, private: Path) -> None:
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(model, sig)


@pytest.fixture(scope="module")
def p384(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A P-384 pair written by ``cryptography`` as ``openssl`` would."""
    folder = tmp_path_factory.mktemp("p384")
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / "key.pem", folder / "key.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.mark.parametrize("pair", ["keys", "p384"])
def test_model_signing_verifies_engine_signatures(model: Path, pair: str, request: pytest.FixtureRequest) -> None:
    private, public = request.getfixturevalue(pair)
    sig = sign_file(model, private)
    _their_verify(model, sig, public)
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="Signature mismatch"):
        _their_verify(model, sig, public)


@pytest.mark.parametrize("pair", ["keys", "p384"])
def test_engine_verifies_model_signing_signatures(
    model: Path, pair: str, request: pytest.FixtureRequest, other_keys: tuple[Path, Path]
) -> None:
    private, public = request.getfixturevalue(pair)
    sig = model.with_name("theirs.sig")
    _their_sign(model, sig, private)
    result = verify_file(model, public, sig)
    assert result.subject == "model.tflite"
    with pytest.raises(VerificationError, match="wrong key"):
        verify_file(model, other_keys[1], sig)
    model.write_bytes(model.read_bytes()[:-1])
    with pytest.raises(VerificationError, match="digest mismatch"):
        verify_file(model, public, sig)


def test_command_lines_both_ways(model: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m model_signing verify key`` accepts the engine's signature; ``python -m engine verify`` accepts
    one from ``python -m model_signing sign key``."""
    private, public = keys
    ours, theirs = model.with_name("ours.sig"), model.with_name("theirs.sig")
    assert main(["sign", str(model), "--key", str(private), "--out", str(ours)]) == 0
    command = [sys.executable, "-m", "model_signing"]
    checked = subprocess.run(
        [*command, "verify", "key", str(model), "--signature", str(ours), "--public_key", str(public)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0 and "Verification succeeded" in checked.stdout, checked.stdout + checked.stderr
    signed = subprocess.run(
        [*command, "sign", "key", str(model), "--signature", str(theirs), "--private_key", str(private)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert main(["verify", str(model), "--key", str(public), "--sig", str(theirs)]) == 0
    assert "verified: " in capsys.readouterr().out


def test_embedded_bundle_signs_the_canonical_content_for_model_signing(
    model: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The embedded bundle, saved as a file, is a model_signing signature of the canonical content saved as a
    file: the embedded form is the same statement over documented bytes."""
    signed = sign_embedded(model, keys[0])
    content = read_model(signed)
    bundle = take_signature(content, strict=True)
    assert bundle is not None
    canonical, sig = tmp_path / "content.tflite", tmp_path / "content.sig"
    canonical.write_bytes(model_to_bytes(content, share_equal_vectors=False))
    sig.write_bytes(bundle)
    _their_verify(canonical, sig, keys[1])
    assert verify_file(canonical, keys[1], sig).digest == hashlib.sha256(canonical.read_bytes()).hexdigest()
