"""The README's signing and encryption example and the embedded-signature snippet of docs/cli.md run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine import write_model
from engine.secure import sign_embedded, verify_file
from tests.secure.conftest import small_model

ROOT = Path(__file__).parents[2]


def _blocks(document: str, heading: str) -> dict[str, str]:
    """The first ``sh`` and ``python`` code blocks after ``heading`` in ``document``."""
    text = (ROOT / document).read_text().split(heading, 1)[1]
    return {kind: text.split(f"```{kind}\n", 1)[1].split("```", 1)[0] for kind in ("sh", "python")}


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    write_model(small_model(), tmp_path / "model.tflite")
    blocks = _blocks("README.md", "### Sign and encrypt")
    _run(["bash", "-e", "-c", blocks["sh"]], tmp_path)
    _run([sys.executable, "-c", blocks["python"]], tmp_path)
    expected = {"signing.pem", "signing.pub.pem", "model.tflite.sig", "model.signed.tflite", "model.key"}
    assert expected | {"model.tflite.enc"} <= {p.name for p in tmp_path.iterdir()}


def test_cli_reference_embedded_snippet_runs(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The snippet extracting an embedded signature gives a model_signing signature of the canonical content."""
    write_model(small_model(), tmp_path / "model.tflite")
    sign_embedded(tmp_path / "model.tflite", keys[0])
    code = (ROOT / "docs/cli.md").read_text().split("### Embedded signatures", 1)[1].split("```python\n")[1]
    _run([sys.executable, "-c", code.split("```")[0]], tmp_path)
    verify_file(tmp_path / "content.tflite", keys[1], tmp_path / "content.sig")
