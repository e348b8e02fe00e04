"""``python -m engine <command>``: inspect, compress, validate, analyze, evaluate, sweep, demo; keygen, sign, verify,
encrypt, decrypt.

Exit codes, the same for every command:

* 0: success.
* 1: error: bad input (a broken model, missing or bad data, an option that does nothing, ...) or a request that
  cannot be done: one ``error:`` line on stderr, no traceback, no output file written (the input file is never
  modified).
* 2: the command line itself is wrong (argparse's usage error).
* 3: validation failed: an output below ``--min-sqnr``, or the candidate fails to load or run in a runtime the
  reference runs in.  After ``compress --validate`` the output file has been written, and the ``error:`` line
  says so (``wrote OUT; validation failed: ...``), also when validation could not run at all.
* 4: ``compress --target-sqnr``/``--max-accuracy-drop``: the budget was not met; the best model found has been
  written, and the ``error:`` line says so (``wrote OUT; budget not met: ...``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from engine.errors import EngineError
from engine.registry import load_plugin
from engine.secure.cli import COMMANDS as SECURITY_COMMANDS

EXIT_ERROR = 1
EXIT_VALIDATION_FAILED = 3
# The module of each command, with an ``add_parsers(commands)`` adding its commands.  Only the module of the
# command being run is imported (every module for --help): the security commands then start without numpy, and
# start-up is much of their time (benchmarks/secure.py).
_COMMAND_MODULES = {
    "engine.summary": ("inspect",),
    "engine.commands": ("compress", "validate", "demo"),
    "engine.accuracy.cli": ("analyze",),
    "engine.evaluation": ("evaluate",),
    "engine.sweep.cli": ("sweep",),
    "engine.secure.cli": SECURITY_COMMANDS,
}


def _plugin_parser() -> argparse.ArgumentParser:
    """The options before the command: plugins load first, so the command's choices and checks know what they
    register (engine.registry)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="load a plugin registering quantization methods (engine.registry); repeatable",
    )
    return parser


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone when it is one, else of every command (help, usage errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Compress, inspect and validate TensorFlow Lite (LiteRT) models.",
        parents=[_plugin_parser()],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    known = any(command in names for names in _COMMAND_MODULES.values())
    for module, names in _COMMAND_MODULES.items():
        if not known or command in names:
            importlib.import_module(module).add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        known, rest = _plugin_parser().parse_known_args(argv)
        for plugin in known.plugin:
            load_plugin(plugin)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = _parser(rest[0] if rest else None).parse_args(argv)
    try:
        return args.run(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The command-line process (``python -m engine``, the ``litert-engine`` script): `main`, then exit without
    the interpreter's last garbage collection over everything it loaded. With Numba's compiler loaded that pass
    took 0.14-0.25 s of a 1.5 s full-int8 run (0.02 s with the objects frozen). The command is done and its files
    are closed by then; reference counting and atexit handlers still run at exit as usual, and only objects in
    reference cycles are left to the OS. ``main`` itself, which tests and programs call in-process, leaves the
    collector alone."""
    code = main(argv)
    gc.freeze()
    sys.exit(code)
