"""``scope-hub convert`` and ``scope-hub import`` (registered in :mod:`scope_hub.cli`).

Torch is imported only when a command runs, never by ``setup_*`` (``scope-hub --help`` and the
registry commands stay torch-free).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="scope-hub convert")
    >>> run = setup_convert(parser)
    >>> args = parser.parse_args(["in", "--to", "saelens", "out"])
    >>> args.src, args.from_, args.to, args.out
    ('in', None, 'saelens', 'out')
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from scope_hub.interop.formats import FORMATS

Runner = Callable[[argparse.Namespace], int]
OFFLINE_HINT = (
    "unset HF_HUB_OFFLINE (and check the network), or pass a local release folder (see `scope-hub import --help`)"
)
IMPORTERS = {
    "gemma-scope-2": "scope_hub.interop.gemma_scope_2:import_gemma_scope_2",
    "gemma-scope-1": "scope_hub.interop.gemma_scope_1:import_gemma_scope_1",
}


def setup_convert(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub convert SRC [--from FORMAT] --to FORMAT OUT``."""
    parser.description = (
        "convert a dictionary folder between formats: "
        + ", ".join(FORMATS)
        + " (--from is detected from the files when omitted)"
    )
    parser.add_argument("src", metavar="SRC", help="folder to read (a dictionary, or a folder of them)")
    parser.add_argument("out", metavar="OUT", help="folder to write (must not exist, unless --overwrite)")
    parser.add_argument(
        "--from", dest="from_", metavar="FORMAT", choices=list(FORMATS), help="format of SRC (default: detected)"
    )
    parser.add_argument("--to", required=True, metavar="FORMAT", choices=list(FORMATS), help="format to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return run_convert


def run_convert(args: argparse.Namespace) -> int:
    from scope_hub.interop.formats import convert, detect_format

    fmt_in = args.from_ or detect_format(args.src)
    written = convert(args.src, args.out, to=args.to, from_=fmt_in, overwrite=args.overwrite)
    for path in written:
        print(f"{fmt_in} -> {args.to}: {path}")
    return 0


def setup_import(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub import gemma-scope-2|gemma-scope-1 SOURCE [--registry URL]``."""
    parser.description = (
        "publish every dictionary of a Gemma Scope release (local folder or Hub repo id, "
        "read through the HF cache; set HF_HUB_OFFLINE=1 to stay offline) to the registry"
    )
    parser.add_argument("format", choices=list(IMPORTERS), help="release layout")
    parser.add_argument(
        "source", metavar="SOURCE", help="local release folder or Hub repo (google/gemma-scope-2-270m-pt)"
    )
    parser.add_argument("--repo-id", metavar="ORG/NAME", help="Hub repo a local folder came from (names the model)")
    parser.add_argument("--revision", metavar="REV", help="Hub revision (branch, tag or commit)")
    parser.add_argument("--model", metavar="ID", help="base model id, when neither repo nor config names it")
    parser.add_argument("--site", metavar="SITE", help="gemma-scope-1 only: site when the repo name is unknown")
    parser.add_argument(
        "--include",
        metavar="GLOB",
        action="append",
        help="only folders matching this glob (repeatable), e.g. 'resid_post/*'",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the planned keys, push nothing")
    parser.add_argument(
        "--license",
        metavar="ID",
        default="cc-by-4.0",
        help="license stated in every imported version's card (default: cc-by-4.0, Gemma Scope's)",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    return run_import


def run_import(args: argparse.Namespace) -> int:
    import importlib

    from scope_hub.registry.backends.hf_client import hub_errors
    from scope_hub.registry.settings import default_registry_url

    module, _, function = IMPORTERS[args.format].partition(":")
    importer = getattr(importlib.import_module(module), function)
    options = dict(
        repo_id=args.repo_id,
        revision=args.revision,
        model=args.model,
        include=args.include,
        dry_run=args.dry_run,
        license=args.license,
    )
    if args.format == "gemma-scope-1":
        options["site"] = args.site
    elif args.site:
        from scope_hub.errors import ConfigError

        raise ConfigError("--site applies to gemma-scope-1 only (Gemma Scope 2 folder names say the site)")
    registry = getattr(args, "registry", None) or default_registry_url()
    with hub_errors(f"hf://{args.source.removeprefix('hf://')}", "the file listing", hint=OFFLINE_HINT):
        report = importer(args.source, registry, **options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        if args.dry_run:
            for result in report.results:
                print(f"{result.folder} -> {result.key or 'FAILED: ' + str(result.reason)}")
        print(report.summary(), file=sys.stdout)
    return 0 if report.ok else 1
