"""Example recipes shipped with the engine (``--recipe``): load one with ``Recipe.load(EXAMPLES["name"])``."""

from pathlib import Path

EXAMPLES: dict[str, Path] = {p.stem: p for p in sorted(Path(__file__).parent.glob("*.json"))}
