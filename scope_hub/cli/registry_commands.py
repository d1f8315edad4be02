"""Registry subcommands of ``scope-hub`` (torch-free): push, pull, ls, info, verify, lock,
yank/rm, gc, reindex. Each ``setup_<name>(parser)`` adds its arguments and returns its runner.

Example:
    >>> from scope_hub.cli import main
    >>> main(["--registry", "memory://doc-cli", "ls"])
    0
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from scope_hub.registry.lockfile import DEFAULT_LOCKFILE

Runner = Callable[[argparse.Namespace], int]


def _registry(args: argparse.Namespace):
    from scope_hub.registry import Registry

    return Registry(args.registry)


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def setup_push(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("folder", metavar="FOLDER", help="dictionary folder (config.json + params*.safetensors)")
    parser.add_argument("key", metavar="KEY", help="key without @ref, e.g. google/gemma-3-270m:resid_post/layer_6/width_16k/sae")
    parser.add_argument("--card", metavar="FILE", help="card file to publish as README.md")

    def run(args: argparse.Namespace) -> int:
        result = _registry(args).push(args.folder, args.key, card=args.card)
        verb = "pushed" if result.created else "unchanged (identical content):"
        print(f"{verb} {result.ref} sha256:{result.content_sha256[:12]}")
        return 0

    return run


def setup_pull(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("key", metavar="KEY", help="key, optionally @vN, @latest or @sha256:<prefix>")
    parser.add_argument("--to", metavar="DIR", help="copy the files into DIR instead of printing the cache folder")
    parser.add_argument("--lock", metavar="FILE", help="resolve through this lockfile (exact locked bytes)")
    parser.add_argument("--verify", action="store_true", help="re-hash cached files instead of trusting sizes")

    def run(args: argparse.Namespace) -> int:
        print(_registry(args).pull(args.key, to=args.to, lock=args.lock, verify=args.verify))
        return 0

    return run


def setup_ls(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("pattern", metavar="PATTERN", nargs="?", default="*", help="fnmatch pattern over keys (default *)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def run(args: argparse.Namespace) -> int:
        for summary in _registry(args).list(args.pattern):
            if args.json:
                print(summary.model_dump_json())
            else:
                latest = f"v{summary.latest}" if summary.latest else "(all yanked)"
                print(f"{summary.key}@{latest}\t{human_size(summary.size)}\t{summary.versions} version(s)")
        return 0

    return run


def setup_info(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("key", metavar="KEY", help="key (its ref picks which version's config and card to show)")
    parser.add_argument("--json", action="store_true", help="print the full record as JSON")

    def run(args: argparse.Namespace) -> int:
        info = _registry(args).info(args.key)
        if args.json:
            print(info.model_dump_json(indent=1))
            return 0
        print(f"{info.key}  ({info.registry})  latest: {'v' + str(info.latest) if info.latest else 'none (all yanked)'}")
        for v in info.versions:
            flag = "  yanked" if v.yanked else ""
            print(f"  v{v.version}  {human_size(v.size)}  {v.created_at}  sha256:{v.content_sha256[:12]}{flag}")
            for f in v.files:
                print(f"      {f.path}  {human_size(f.size)}")
        print("config:", json.dumps(info.config, sort_keys=True))
        if info.card:
            print("card:\n" + info.card.rstrip())
        return 0

    return run


def setup_verify(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--cache", action="store_true", help="also re-hash the local download cache")

    def run(args: argparse.Namespace) -> int:
        report = _registry(args).verify(cache=args.cache)
        for problem in report.problems:
            print(problem)
        print(f"checked {report.blobs_checked} blob(s), {report.manifests_checked} manifest(s): "
              f"{len(report.problems)} problem(s)")
        if not report.ok:
            sys.stderr.write(f"scope-hub verify: error: {len(report.problems)} problem(s) found; "
                             "re-push the affected versions or restore the blobs\n")
            return 1
        return 0

    return run


def setup_lock(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("keys", metavar="KEY", nargs="+", help="keys to pin (each at its ref, default latest)")
    parser.add_argument("--out", metavar="FILE", default=DEFAULT_LOCKFILE, help=f"lockfile to write (default {DEFAULT_LOCKFILE})")

    def run(args: argparse.Namespace) -> int:
        lock = _registry(args).lock(args.keys, args.out)
        for entry in lock.entries:
            print(f"locked {entry.key}@v{entry.version} manifest sha256:{entry.manifest_sha256[:12]}")
        print(f"wrote {args.out}")
        return 0

    return run


def setup_yank(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("key", metavar="KEY@vN", help="exact version to yank")

    def run(args: argparse.Namespace) -> int:
        version = _registry(args).yank(args.key)
        print(f"yanked v{version} of {args.key.partition('@')[0]} (still pullable as @v{version})")
        return 0

    return run


setup_rm = setup_yank


def setup_gc(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--grace", metavar="SECONDS", type=float, default=3600.0,
                        help="keep unreferenced blobs younger than this, they may belong to a push in flight (default 3600)")
    parser.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

    def run(args: argparse.Namespace) -> int:
        report = _registry(args).gc(grace_seconds=args.grace, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(report.deleted)} object(s), {human_size(report.bytes_freed)}; "
              f"kept {report.kept_recent} younger than the grace period")
        if report.note:
            print(report.note)
        return 0

    return run


def setup_reindex(parser: argparse.ArgumentParser) -> Runner:
    def run(args: argparse.Namespace) -> int:
        print(f"indexed {_registry(args).reindex()} version(s)")
        return 0

    return run
