"""Signing and verification: detached and embedded signatures, every named failure, keys, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine import EngineError, Metadata, model_to_bytes, read_model, write_model
from engine.cli import main
from engine.format.ir import Buffer
from engine.secure import (
    VerificationError,
    generate_keypair,
    sign_embedded,
    sign_file,
    verify,
    verify_embedded,
    verify_file,
)
from engine.secure.bundle import Bundle, parse_bundle
from engine.secure.embedded import SIGNATURE_ENTRY, content_digest, take_signature
from tests.runtimes import run_model
from tests.secure.conftest import sample_input


def _reason(call: Callable[..., object], *args: object) -> str:
    """The named reason a verification fails for, checking the message is one line."""
    with pytest.raises(VerificationError) as info:
        call(*args)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"verification failed: {info.value.reason}: ")
    return info.value.reason


def _write_pem(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


# ------------------------------------------------------------------------------------ detached


def test_detached_round_trip(model: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    before = model.read_bytes()
    sig = sign_file(model, private)
    assert sig == model.with_name("model.tflite.sig")
    result = verify_file(model, public)
    assert result.digest == hashlib.sha256(before).hexdigest() and result.subject == "model.tflite"
    assert verify(model, public) == result  # MODEL.sig is found beside the model
    assert model.read_bytes() == before


def test_detached_failures_are_named(model: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]) -> None:
    private, public = keys
    sig = sign_file(model, private, model.with_suffix(".sig"))
    assert _reason(verify_file, model, other_keys[1], sig) == "wrong key"
    assert _reason(verify_file, model, public, model.with_name("absent.sig")) == "no signature"
    raw = sig.read_bytes()
    for bad in (b"", b"{", b"[" * 100_000, raw + b"\n", raw.replace(b'"keyid":""', b'"keyid":"x"'), b'{"mediaType":1}'):
        sig.write_bytes(bad)
        assert _reason(verify_file, model, public, sig) == "malformed bundle"
    bundle = parse_bundle(raw, "sig")
    other = parse_bundle(sign_file(model, other_keys[0], model.with_suffix(".other")).read_bytes(), "other")
    sig.write_bytes(Bundle(bundle.payload, other.signature, bundle.key_hint).to_json())
    assert _reason(verify_file, model, public, sig) == "bad signature"
    sig.write_bytes(Bundle(bundle.payload, bundle.signature, other.key_hint).to_json())
    with pytest.raises(VerificationError, match=r"key hint .* was altered"):
        verify_file(model, public, sig)
    sig.write_bytes(raw)
    verify_file(model, public, sig)
    model.write_bytes(model.read_bytes() + b"\0")
    assert _reason(verify_file, model, public, sig) == "digest mismatch"


def test_bundles_of_other_kinds_are_refused_by_name(model: Path, keys: tuple[Path, Path]) -> None:
    sig = sign_file(model, keys[0])
    document = json.loads(sig.read_bytes())
    document["verificationMaterial"] = {"certificate": {"rawBytes": "AA=="}, "tlogEntries": []}
    sig.write_text(json.dumps(document, separators=(",", ":")))
    with pytest.raises(VerificationError, match=r"not signed with a private key .*certificate"):
        verify_file(model, keys[1])


# ------------------------------------------------------------------------------------ keys


def test_keygen_writes_a_private_pair_and_never_overwrites(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "k.pem")
    assert public == tmp_path / "k.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(EngineError, match="never overwritten"):
        generate_keypair(private)
    assert private.read_bytes() == before
    (tmp_path / "lonely.pub").write_text("x")
    with pytest.raises(EngineError, match="never overwritten"):
        generate_keypair(tmp_path / "lonely")
    assert not (tmp_path / "lonely").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub.pem", "lonely.pub"]


def test_key_errors_are_one_line(model: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    secp256k1 = _write_pem(tmp_path / "k1.pem", ec.generate_private_key(ec.SECP256K1()))
    rsa_key = _write_pem(tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (sign_file, public, "is a public key"),
        (sign_file, garbage, "not a PEM private key"),
        (sign_file, secp256k1, "secp256k1; use P-256"),
        (sign_file, rsa_key, "not an elliptic-curve"),
        (sign_file, locked, "password-protected"),
        (sign_file, tmp_path / "absent.pem", "cannot read key"),
        (verify_file, private, "is a private key"),
        (verify_file, garbage, "not a PEM public key"),
    ]
    for call, key, fragment in cases:
        with pytest.raises(EngineError) as info:
            call(model, key)
        assert fragment in str(info.value) and "\n" not in str(info.value), (key, str(info.value))
    assert not model.with_name("model.tflite.sig").exists()


def test_p384_keys_sign_and_verify(model: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    public = tmp_path / "p384.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    sign_file(model, _write_pem(tmp_path / "p384.pem", key))
    verify_file(model, public)


# ------------------------------------------------------------------------------------ embedded


def test_embedded_round_trip_and_canonical_content(model: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    before = model.read_bytes()
    signed = sign_embedded(model, private)
    assert signed == tmp_path / "model.signed.tflite" and model.read_bytes() == before
    result = verify(signed, public)  # no model.signed.tflite.sig: the embedded signature is checked
    assert result.signature == f"embedded ({SIGNATURE_ENTRY})"
    # The signed content is the model without the entry, serialized by the writer in the canonical layout.
    canonical = model_to_bytes(read_model(model), share_equal_vectors=False)
    assert result.digest == hashlib.sha256(canonical).hexdigest() != hashlib.sha256(before).hexdigest()
    entries = read_model(signed).metadata
    assert [m.name for m in entries] == ["min_runtime_version", SIGNATURE_ENTRY]
    # Re-signing the signed model signs the same content.
    again = sign_embedded(signed, private, tmp_path / "again.tflite")
    assert verify_embedded(again, public).digest == result.digest


def test_embedded_content_without_metadata_has_no_metadata_field(model: Path, keys: tuple[Path, Path]) -> None:
    bare = read_model(model)
    bare.metadata = []  # an empty list is written as an empty vector: the canonical form drops it
    write_model(bare, model, share_equal_vectors=False)
    signed = sign_embedded(model, keys[0])
    content = read_model(signed)
    take_signature(content, strict=True)
    assert content.metadata is None
    without = read_model(model)
    without.metadata = None
    assert (
        verify_embedded(signed, keys[1]).digest
        == hashlib.sha256(model_to_bytes(without, share_equal_vectors=False)).hexdigest()
    )


def test_signed_model_runs_unchanged_in_litert(model: Path, keys: tuple[Path, Path]) -> None:
    signed = sign_embedded(model, keys[0])
    for runtime in ("default", "builtin"):
        expected = run_model(model, sample_input(), runtime)
        for source in (signed, signed.read_bytes()):
            got = run_model(source, sample_input(), runtime)
            assert all(np.array_equal(expected[name], got[name]) for name in expected)


def test_embedded_failures_are_named(model: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert _reason(verify_embedded, model, public) == "no signature"
    signed = sign_embedded(model, private)
    assert _reason(verify_embedded, signed, other_keys[1]) == "wrong key"
    good = signed.read_bytes()

    changed = read_model(signed)  # a weight changed, the old signature kept: canonical layout, wrong content
    weights = next(t for t in changed.main.tensors if t.is_constant)
    weights.data = weights.data + 1
    write_model(changed, signed, share_equal_vectors=False)
    assert _reason(verify_embedded, signed, public) == "digest mismatch"

    padding = good.index(b"\0" * 4, len(good) // 2)  # a byte the reader skips: the layout is no longer canonical
    signed.write_bytes(good[:padding] + b"\1" + good[padding + 1 :])
    assert _reason(verify_embedded, signed, public) == "digest mismatch"

    signed.write_bytes(good[:100])
    assert _reason(verify_embedded, signed, public) == "malformed model"

    twice = read_model(good)
    entry = twice.metadata[-1]
    twice.metadata = [entry, *twice.metadata]
    write_model(twice, signed, share_equal_vectors=False)
    assert _reason(verify_embedded, signed, public) == "malformed bundle"
    twice.metadata = [entry, twice.metadata[1]]
    write_model(twice, signed, share_equal_vectors=False)
    with pytest.raises(VerificationError, match="not the last metadata entry"):
        verify_embedded(signed, public)

    altered = read_model(good)
    altered.metadata[-1] = Metadata(SIGNATURE_ENTRY, Buffer.of(np.frombuffer(b"{}", np.uint8)))
    write_model(altered, signed, share_equal_vectors=False)
    assert _reason(verify_embedded, signed, public) == "malformed bundle"


def test_inspect_shows_signer_and_status(
    model: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    signed = sign_embedded(model, keys[0])
    assert main(["inspect", str(model)]) == 0
    assert "signed (embedded" not in capsys.readouterr().out
    assert main(["inspect", str(signed), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["embedded_signature"]
    hint = hashlib.sha256(keys[1].read_bytes()).hexdigest()
    assert facts["signer_key_sha256"] == hint and facts["subject"] == "model.signed.tflite"
    assert facts["status"].startswith("content intact")
    changed = read_model(signed)
    weights = next(t for t in changed.main.tensors if t.is_constant)
    weights.data = weights.data * 2
    write_model(changed, signed, share_equal_vectors=False)
    assert main(["inspect", str(signed)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("signed (embedded"))
    assert f"signer key sha256:{hint}" in line and "digest mismatch" in line


# ------------------------------------------------------------------------------------ command line


def test_cli_commands_and_exit_codes(
    model: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    assert main(["sign", str(model), "--key", str(private)]) == 0
    assert main(["verify", str(model), "--key", str(public)]) == 0
    assert "verified: " in capsys.readouterr().out
    assert main(["sign", str(model), "--key", str(private), "--embed", "--out", str(tmp_path / "s.tflite")]) == 0
    assert main(["verify", str(tmp_path / "s.tflite"), "--key", str(public)]) == 0
    capsys.readouterr()
    model.write_bytes(model.read_bytes()[:-1] + b"\1")
    assert main(["verify", str(model), "--key", str(public)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: verification failed: digest mismatch: ")
    assert main(["sign", str(model), "--key", str(private), "--out", str(model)]) == 1
    assert "is the input file" in capsys.readouterr().err
    keygen = ["keygen", "--out", str(tmp_path / "new")]
    assert main(keygen) == 0 and main(keygen) == 1


def test_compress_sign(
    model: Path, tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.tflite"
    assert main(["compress", str(model), "-o", str(out), "--sign", str(keys[0])]) == 0
    assert f"signed: {out}.sig" in capsys.readouterr().out
    assert verify_file(out, keys[1]).digest == hashlib.sha256(out.read_bytes()).hexdigest()
    other = tmp_path / "other.tflite"
    assert main(["compress", str(model), "-o", str(other), "--sign", str(keys[1])]) == 1  # a public key
    assert "is a public key" in capsys.readouterr().err and not other.exists()


def test_process_level_behaviour(model: Path, keys: tuple[Path, Path]) -> None:
    """In a fresh interpreter: ``import engine`` (and the CLI module) does not import cryptography, and without
    cryptography a security command is one error line naming the extra while inspect still works."""
    script = (
        "import sys\n"
        "import engine, engine.cli, engine.secure\n"
        "assert 'cryptography' not in sys.modules\n"
        "sys.modules['cryptography'] = None\n"
        f"assert engine.cli.main(['inspect', {str(model)!r}]) == 0\n"
        f"sys.exit(engine.cli.main(['sign', {str(model)!r}, '--key', {str(keys[0])!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "error: signing and encryption need the cryptography package: pip install 'litert-engine[security]'"
    )
    assert not os.path.exists(f"{model}.sig")


def test_content_digest_is_the_writer_bytes(model: Path) -> None:
    """In the canonical layout (equal vectors each on its own), which models signed before 2026-12-04 have."""
    content = read_model(model)
    canonical = model_to_bytes(content, share_equal_vectors=False)
    assert (
        content_digest(content)
        == hashlib.sha256(canonical).hexdigest()
        != hashlib.sha256(model_to_bytes(content)).hexdigest()
    )
