"""What each command imports, checked in fresh interpreters: ``import engine`` imports no numpy, the security
commands stream bytes without numpy, ``inspect`` reads a model without the quantization modules or Numba, and the
registries still hold their built-ins (and refuse a plugin taking a built-in's name) however they are reached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import write_model
from tests.secure.conftest import small_model


def _run(script: str) -> None:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.tflite"
    write_model(small_model(), path)
    return path


def test_import_engine_imports_no_numpy() -> None:
    _run("import sys, engine\nassert 'numpy' not in sys.modules, 'numpy imported'\nassert engine.Model\n")


def test_security_commands_run_without_numpy(model: Path, tmp_path: Path) -> None:
    key, secret = tmp_path / "k.pem", tmp_path / "secret.key"
    commands = [
        ["keygen", "--out", str(key)],
        ["keygen", "--encryption", "--out", str(secret)],
        ["sign", str(model), "--key", str(key)],
        ["verify", str(model), "--key", str(tmp_path / "k.pub.pem")],
        ["encrypt", str(model), "-o", str(tmp_path / "m.enc"), "--key-file", str(secret)],
        ["decrypt", str(tmp_path / "m.enc"), "-o", str(tmp_path / "m.tflite"), "--key-file", str(secret)],
    ]
    _run(
        "import sys\nfrom engine.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    assert main(argv) == 0, argv\n"
        "    assert 'numpy' not in sys.modules, argv\n"
    )
    assert (tmp_path / "m.tflite").read_bytes() == model.read_bytes()


def test_inspect_runs_without_the_quantization_modules(model: Path) -> None:
    _run(
        "import sys\nfrom engine.cli import main\n"
        f"assert main(['inspect', {str(model)!r}]) == 0\n"
        "loaded = [m for m in sys.modules if m.startswith(('engine.quant', 'engine.passes', 'numba'))]\n"
        "assert not loaded, loaded\n"
    )


@pytest.mark.parametrize("first", ["engine.registry", "engine.quant.rounding", "engine.quant.rounding.gptq"])
def test_built_ins_are_registered_in_one_order_however_reached(first: str) -> None:
    _run(
        f"import importlib\nimportlib.import_module({first!r})\n"
        "from engine.registry import ACTIVATION_SCHEMES, OBSERVERS, ROUNDING_METHODS\n"
        "assert ROUNDING_METHODS.names() == ('nearest', 'adaround', 'gptq'), ROUNDING_METHODS.names()\n"
        "assert ACTIVATION_SCHEMES.names() == ('int8', 'int16x8'), ACTIVATION_SCHEMES.names()\n"
        "assert OBSERVERS.names() == ('minmax', 'mse', 'entropy', 'percentile'), OBSERVERS.names()\n"
    )


def test_a_plugin_cannot_take_a_built_in_name_before_any_lookup() -> None:
    _run(
        "from engine.errors import EngineError\nfrom engine.registry import ROUNDING_METHODS\n"
        "try:\n"
        "    ROUNDING_METHODS.register('gptq')(lambda problem: None)\n"
        "except EngineError as exc:\n"
        "    assert str(exc) == \"rounding method 'gptq' is already registered\", exc\n"
        "else:\n"
        "    raise AssertionError('a built-in name was taken')\n"
    )
