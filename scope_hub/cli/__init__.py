"""The ``scope-hub`` command line (console script ``scope_hub.cli:main``).

Subcommands are registered by name in :data:`COMMANDS` with a ``"module:function"`` target;
only the chosen command's module is imported, so ``scope-hub ls`` never imports torch even
when other commands need it. To add one (``train``, ``convert``, ``import``, ``trace``,
``dashboard`` ...), write a module with::

    def setup(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
        parser.add_argument(...)          # cheap: no heavy imports at module or setup level
        def run(args) -> int:
            import torch                  # heavy imports here, when the command really runs
            ...
            return 0
        return run

and register it: in this package with ``register_command(name, help, "module:function")``, or,
from another distribution, as an entry point in the ``scope_hub.commands`` group (this is how
``scope-hub train`` reaches ``trainers.cli:setup`` without scope_hub importing trainers)::

    [project.entry-points."scope_hub.commands"]
    train = "trainers.cli:setup"

Every command gets the global ``--registry URL``. A plugin's line in ``scope-hub --help`` (and its
``--help`` text) is the description its setup gives the parser, else the first line of its
module's docstring.

Errors print one line to stderr (credentials in URLs masked) and exit 2 (usage: bad arguments, bad keys,
bad registry URLs, an unreachable storage endpoint) or 1 (anything else); ``SCOPE_HUB_DEBUG=1`` shows the
traceback instead.

Example:
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: scope-hub ...
    0
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from scope_hub.errors import (
    ConfigError,
    KeyParseError,
    RegistryConnectionError,
    RegistryURLError,
    ScopeHubError,
    UnsafePathError,
)
from scope_hub.redaction import redact_text
from scope_hub.settings import settings

PROG = "scope-hub"
PLUGIN_GROUP = "scope_hub.commands"
USAGE_ERRORS = (ConfigError, KeyParseError, UnsafePathError, RegistryURLError, RegistryConnectionError)
"""Bad input the user can fix (exit 2, as argparse does); anything else exits 1."""


@dataclass(frozen=True)
class Command:
    """A lazily imported subcommand."""

    name: str
    help: str | None  # None: read from the command's own setup / module docstring when shown
    target: str  # "module:function", function(parser) -> run(args) -> exit code
    plugin: bool = False


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str | None, target: str, *, plugin: bool = False) -> None:
    """Add (or replace) a subcommand; ``target`` is imported only when the command runs (or its
    help is shown, when ``help`` is None)."""
    COMMANDS[name] = Command(name, help, target, plugin)


_REGISTRY = "scope_hub.cli.registry_commands"
for _name, _help in [
    ("push", "publish a dictionary folder as the next version of KEY"),
    ("pull", "download KEY (default @latest) and print its local folder"),
    ("ls", "list published keys matching an fnmatch PATTERN"),
    ("info", "versions, sizes, metadata and card of KEY"),
    ("card", "print the card of KEY[@ref] (rendered at push, pinned to its version)"),
    ("release", "build (and --publish) a release card pinning KEYs, or print a published one"),
    ("verify", "re-hash every blob of the registry; exit 1 on any mismatch"),
    ("lock", "pin KEYs into a lockfile (scope.lock)"),
    ("yank", "yank KEY@vN: latest skips it, exact pins still pull it"),
    ("gc", "delete blobs no manifest references"),
    ("reindex", "rebuild the registry index from the manifests"),
]:
    register_command(_name, _help, f"{_REGISTRY}:setup_{_name}")
register_command(
    "convert",
    "convert a dictionary folder between formats (saelens, sparsify, ...)",
    "scope_hub.interop.cli_commands:setup_convert",
)
register_command(
    "import",
    "publish a whole Gemma Scope 1/2 release (folder or Hub repo) to the registry",
    "scope_hub.interop.cli_commands:setup_import",
)
register_command(
    "trace",
    "attribution graph of a prompt over transcoders/CLTs (circuit-tracer JSON)",
    "scope_hub.analysis.circuits.cli:setup",
)
register_command("dashboard", "static HTML feature dashboard of a dictionary", "scope_hub.analysis.cli:setup_dashboard")
register_command(
    "refusal",
    "refusal direction, carrying features and interventions on a chat model",
    "scope_hub.analysis.cli:setup_refusal",
)


def _register_plugins() -> None:
    """Commands other distributions declare in the ``scope_hub.commands`` entry-point group.

    Built-in names win: a plugin cannot shadow ``push`` or ``pull``.
    """
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name not in COMMANDS:
            register_command(entry.name, None, entry.value, plugin=True)


def _first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").strip().splitlines()), "")


def _help_of(command: Command) -> str:
    """One line for the command listing; a plugin's is the description its setup gives its parser,
    else the first line of its module docstring (so importing it costs only what its setup costs)."""
    if command.help is not None:
        return command.help
    module_name, _, function = command.target.partition(":")
    try:
        module = importlib.import_module(module_name)
        probe = argparse.ArgumentParser(prog=f"{PROG} {command.name}", add_help=False)
        getattr(module, function)(probe)
    except Exception as exc:
        return f"(plugin {module_name} cannot be loaded: {type(exc).__name__}: {_one_line(exc)})"
    text = _first_line(probe.description) or _first_line(module.__doc__)
    return f"{text} [plugin {module_name}]" if text else f"(plugin {module_name})"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _global_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--registry",
        metavar="URL",
        default=default,
        help="registry URL: file://, memory://, s3://, hf:// (default: $SCOPE_HUB_REGISTRY or a local one)",
    )


class _TopParser(_Parser):
    """The top-level parser: its command listing is built only when help is shown."""

    def format_help(self) -> str:
        listing = "\n".join(f"  {c.name:<10} {_help_of(c)}" for c in COMMANDS.values())
        self.epilog = f"commands:\n{listing}\n\nrun `{PROG} COMMAND --help` for a command's options"
        return super().format_help()


def _top_parser() -> _Parser:
    parser = _TopParser(
        prog=PROG,
        description="Dictionary registry and tools for mechanistic interpretability.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser)
    parser.add_argument("command", metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _one_line(exc: BaseException) -> str:
    return redact_text(" ".join(str(exc).split())) or type(exc).__name__


def _run(argv: Sequence[str]) -> int:
    _register_plugins()
    top = _top_parser().parse_args(argv)
    command = COMMANDS.get(top.command)
    if command is None:
        _top_parser().error(_unknown_command(top.command))
    module_name, _, function = command.target.partition(":")
    sub = _Parser(prog=f"{PROG} {command.name}", description=command.help)
    _global_options(sub, default=top.registry)
    module = importlib.import_module(module_name)
    handler: Callable[[argparse.Namespace], int] = getattr(module, function)(sub)
    if not sub.description:  # a plugin whose setup gave its parser no description
        sub.description = _first_line(module.__doc__) or None
    return handler(sub.parse_args(top.args))


def _unknown_command(name: str) -> str:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    text = (
        f"unknown command {name!r}; did you mean {close[0]!r}?"
        if close
        else f"unknown command {name!r}; choose from {', '.join(COMMANDS)}"
    )
    if not any(c.plugin for c in COMMANDS.values()):
        text += " (plugin commands such as `train` appear once their package is installed: pip install -e .)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scope-hub`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        debug = settings().debug
    except ScopeHubError:  # a malformed variable: the command itself reports it
        debug = False
    try:
        return _run(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, ScopeHubError):
            sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
            return 2 if isinstance(exc, USAGE_ERRORS) else 1
        kind = "error" if isinstance(exc, OSError) else f"internal error ({type(exc).__name__})"
        sys.stderr.write(f"{PROG}: {kind}: {_one_line(exc)} (set SCOPE_HUB_DEBUG=1 for a traceback)\n")
        return 1


if __name__ == "__main__":  # python -m scope_hub.cli
    sys.exit(main())
