"""Registry subcommands of ``scope-hub`` (torch-free): push, pull, ls, info, card, release, verify,
lock, yank/rm, gc, reindex. Each ``setup_<name>(parser)`` adds its arguments and returns its runner.

Example:
    >>> from scope_hub.cli import main
    >>> main(["--registry", "memory://doc-cli", "ls"])
    0
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from scope_hub.atomic_files import atomic_write_text
from scope_hub.registry.lockfile import DEFAULT_LOCKFILE

Runner = Callable[[argparse.Namespace], int]


def _registry(args: argparse.Namespace) -> Any:
    from scope_hub.registry import Registry, as_registry

    revision = getattr(args, "revision", None)
    if revision:
        from scope_hub.registry.backends.hf_client import with_revision
        from scope_hub.registry.settings import default_registry_url

        return Registry(with_revision(args.registry or default_registry_url(), revision))
    return as_registry(args.registry)


def _revision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--revision",
        metavar="REV",
        help="hf:// only: read the registry as it is at this branch, tag or commit sha (same as hf://org/repo@REV)",
    )


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def setup_push(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "folder",
        metavar="FOLDER",
        help="dictionary folder in any layout scope-hub reads (scope-hub, Gemma Scope 2/1, SAELens, sparsify, "
        "dictionary_learning, circuit-tracer), a Hub folder hf://ORG/REPO/FOLDER[@REV] or a SAELens name "
        "saelens://RELEASE/SAE_ID; other layouts are converted to scope-hub's, the card naming the source "
        "format and its files' sha256",
    )
    parser.add_argument(
        "key", metavar="KEY", help="key without @ref, e.g. google/gemma-3-270m:resid_post/layer_6/width_16k/sae"
    )
    parser.add_argument(
        "--card",
        metavar="FILE",
        help="card source (markdown, optional front matter); default: the folder's README.md. "
        "The stored README.md is rendered from it and config.json for the new version",
    )
    parser.add_argument(
        "--license",
        metavar="ID",
        help="license of the weights (e.g. apache-2.0), when the card source does not state one; required "
        "then, except for Gemma Scope folders, which default to their published cc-by-4.0",
    )
    parser.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="hf:// only: create the Hub repo private if this push creates it",
    )

    def run(args: argparse.Namespace) -> int:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="scope-hub-push-") as scratch:
            folder, license = args.folder, args.license
            if _is_hub_source(folder) or not _is_native(Path(folder)):
                from scope_hub.sources import GEMMA_SCOPE_FORMATS, publishable_folder

                converted, fmt = publishable_folder(folder, Path(scratch) / "dictionary")
                if str(converted) != str(folder):
                    print(f"converted a {fmt} folder to scope-hub's layout for publishing", file=sys.stderr)
                folder = converted
                if license is None and args.card is None and fmt in GEMMA_SCOPE_FORMATS:
                    from scope_hub.interop.release import GEMMA_SCOPE_LICENSE

                    license = GEMMA_SCOPE_LICENSE
            result = _registry(args).push(folder, args.key, card=args.card, license=license, private=args.private)
        if result.created:
            print(f"pushed {result.ref} sha256:{result.content_sha256[:12]}")
        else:
            print(f"unchanged, v{result.version}: {result.ref} already holds sha256:{result.content_sha256[:12]}")
        return 0

    return run


def setup_pull(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "key",
        metavar="KEY",
        help="key, optionally @vN, @latest or @sha256:<prefix>; or a Hub folder hf://ORG/REPO/FOLDER[@REV] "
        "or a SAELens name saelens://RELEASE/SAE_ID (only that folder is downloaded)",
    )
    parser.add_argument("--to", metavar="DIR", help="copy the files into DIR instead of printing the cache folder")
    parser.add_argument("--lock", metavar="FILE", help="resolve through this lockfile (exact locked bytes)")
    parser.add_argument("--verify", action="store_true", help="re-hash cached files instead of trusting sizes")
    _revision_option(parser)

    def run(args: argparse.Namespace) -> int:
        if _is_hub_source(args.key):
            print(_pull_hub_source(args))
            return 0
        print(_registry(args).pull(args.key, to=args.to, lock=args.lock, verify=args.verify))
        return 0

    return run


def _is_native(folder) -> bool:
    """A folder in scope-hub's own layout (pushed as it is); a missing folder counts, for push's error."""
    from scope_hub.registry.content import is_native_folder

    return not folder.is_dir() or is_native_folder(folder)


def _is_hub_source(text: str) -> bool:
    """A Hub folder or SAELens name (``hf://ORG/REPO`` alone is a registry)."""
    from scope_hub.registry.backends.hf_folders import is_hub_folder

    return text.startswith("saelens://") or is_hub_folder(text)


def _pull_hub_source(args: argparse.Namespace):
    """A Hub folder or SAELens name: only that folder, into the Hugging Face cache (or copied to --to)."""
    import shutil
    from pathlib import Path

    from scope_hub.sources import fetch_source, locked_entry

    if args.lock:
        entry = locked_entry(args.key, args.lock)
        local, _, _ = fetch_source(str(entry.resolved), expected_sha256=entry.content_sha256)
    else:
        local, _, _ = fetch_source(args.key)
    if args.to is None:
        return local
    shutil.copytree(local, Path(args.to), dirs_exist_ok=True)
    return Path(args.to)


def setup_card(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("key", metavar="KEY", help="key, optionally @vN, @latest or @sha256:<prefix>")
    _revision_option(parser)

    def run(args: argparse.Namespace) -> int:
        sys.stdout.write(_registry(args).card(args.key).rstrip("\n") + "\n")
        return 0

    return run


def _description(path: str | None, out: str) -> str:
    """Description text from --description FILE (a release card's description, or the file's
    markdown without front matter), else from the existing --out card (re-pinning keeps it)."""
    from pathlib import Path

    from scope_hub.cards import ReleaseCard, parse_card
    from scope_hub.errors import CardError, DictionaryNotFoundError

    source = Path(path) if path else Path(out)
    if not source.is_file():
        if path:
            raise DictionaryNotFoundError(f"description file {path!r} does not exist")
        return ""
    text = source.read_text(encoding="utf-8")
    front, body = parse_card(text)
    if "scope_hub_release" in front:
        try:
            return ReleaseCard.parse(text, str(source)).description
        except CardError:
            if not path:
                return ""  # an --out file that is not a valid release card: overwritten
            raise
    return body.strip() if path else ""


def setup_release(parser: argparse.ArgumentParser) -> Runner:
    parser.description = (
        "build a release card pinning KEYs to their versions and content sha256 "
        "(written to --out, stored in the registry with --publish); without KEYs, print "
        "a published release card (NAME or NAME@vN)"
    )
    parser.add_argument(
        "name", metavar="NAME", help="release name, e.g. scope-hub-demo-gemma-3-270m (NAME@vN to read one)"
    )
    parser.add_argument("keys", metavar="KEY", nargs="*", help="keys to pin (each at its ref, default latest)")
    parser.add_argument("--license", metavar="ID", help="license of the released weights (required with KEYs)")
    parser.add_argument(
        "--description",
        metavar="FILE",
        help="markdown describing the release (default: the description of an existing --out card)",
    )
    parser.add_argument("--out", metavar="FILE", help="where to write the card (default cards/NAME.md)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also store it in the registry as releases/NAME/vN.md (write-once; N assigned)",
    )

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from scope_hub.registry.layout import check_release_name

        name, _, ref = args.name.partition("@")
        check_release_name(name)
        if not args.keys:
            if args.license or args.description or args.out or args.publish:
                parser.error("--license/--description/--out/--publish build a release: give its KEYs")
            version = None
            if ref:
                if not (ref.startswith("v") and ref[1:].isdigit()):
                    parser.error(f"bad release ref {ref!r}: use NAME@vN")
                version = int(ref[1:])
            sys.stdout.write(_registry(args).read_release(name, version).rstrip("\n") + "\n")
            return 0
        if ref:
            parser.error("a release being built gets its version when published: give NAME without @vN")
        if not args.license:
            parser.error("--license is required to build a release (e.g. --license apache-2.0)")
        out = Path(args.out or Path("cards") / f"{name}.md")
        reg = _registry(args)
        card = reg.build_release(
            name, args.keys, license=args.license, description=_description(args.description, str(out))
        )
        if args.publish:
            card, created = reg.publish_release(card)
            where = f"releases/{name}/v{card.version}.md in {reg.url}"
            print(f"published {where}" if created else f"unchanged (identical to {where})")
        atomic_write_text(out, card.render())
        for entry in card.entries:
            print(f"pinned {entry.key} sha256:{(entry.sha256 or '')[:12]}")
        print(f"wrote {out}")
        return 0

    return run


def setup_ls(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "pattern", metavar="PATTERN", nargs="?", default="*", help="fnmatch pattern over keys (default *)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")

    def run(args: argparse.Namespace) -> int:
        registry = _registry(args)
        summaries = registry.list(args.pattern)
        for summary in summaries:
            if args.json:
                print(summary.model_dump_json())
            else:
                latest = f"v{summary.latest}" if summary.latest else "(all yanked)"
                print(f"{summary.key}@{latest}\t{human_size(summary.size)}\t{summary.versions} version(s)")
        if not summaries:
            _explain_empty(registry, args)
        return 0

    return run


def _explain_empty(registry, args: argparse.Namespace) -> None:
    """Say on stderr why ``ls`` printed nothing; a configured local registry that is not there is an error
    (a typo in its path must not pass for an empty registry). The built-in default one exists only
    once something is pushed to it, like any registry (``push`` creates it)."""
    from scope_hub.errors import RegistryError
    from scope_hub.settings import settings

    url = registry.url
    if args.pattern != "*" and (count := len(registry.list())):
        sys.stderr.write(
            f"no key in {url} matches {args.pattern!r} ({count} key(s) published; `scope-hub ls` lists them all)\n"
        )
        return
    configured = bool(args.registry or (settings().registry or "").strip())
    if url.startswith("file://"):
        from scope_hub.registry.backends.file import path_of_url

        root = path_of_url(url)
        if not root.is_dir():
            if configured:
                raise RegistryError(
                    f"registry {url} does not exist (no folder {root}); check --registry / "
                    f"$SCOPE_HUB_REGISTRY (`scope-hub push` creates a registry on first use)"
                )
            sys.stderr.write(
                f"registry {url} does not exist yet: nothing was pushed to it "
                "(`scope-hub push FOLDER KEY` creates it)\n"
            )
            return
        sys.stderr.write(f"registry {url} is empty: nothing was pushed to it yet\n")
        return
    sys.stderr.write(f"registry {url} is empty or does not exist yet\n")


def setup_info(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("key", metavar="KEY", help="key (its ref picks which version's config and card to show)")
    parser.add_argument("--json", action="store_true", help="print the full record as JSON")
    _revision_option(parser)

    def run(args: argparse.Namespace) -> int:
        info = _registry(args).info(args.key)
        if args.json:
            print(info.model_dump_json(indent=1))
            return 0
        print(
            f"{info.key}  ({info.registry})  latest: {'v' + str(info.latest) if info.latest else 'none (all yanked)'}"
        )
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


def _verify_folders(folders: list[str]):
    """Each folder's files re-hashed against the sha256 its card records."""
    from pathlib import Path

    from scope_hub.errors import DictionaryNotFoundError
    from scope_hub.registry.content import card_problems, folder_hashes
    from scope_hub.registry.records import VerifyReport

    report = VerifyReport()
    for name in folders:
        folder = Path(name)
        if not folder.is_dir():
            raise DictionaryNotFoundError(f"{name}: no such folder")
        hashes = folder_hashes(folder)
        problems = card_problems(folder, hashes)
        if problems is None:
            problems = [f"{name}: no README.md card recording file hashes (pull the version from its registry)"]
        report.blobs_checked += len(hashes)
        report.manifests_checked += 1
        report.problems += problems
    return report


def setup_verify(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "folders",
        metavar="FOLDER",
        nargs="*",
        help="check these dictionary folders (a pull, a Hub download) against the sha256 their card "
        "records, instead of the registry",
    )
    parser.add_argument("--cache", action="store_true", help="also re-hash the local download cache")

    def run(args: argparse.Namespace) -> int:
        report = _verify_folders(args.folders) if args.folders else _registry(args).verify(cache=args.cache)
        for problem in report.problems:
            print(problem)
        cards = "" if args.folders else f", {report.cards_checked} card(s)"
        print(
            f"checked {report.blobs_checked} {'file' if args.folders else 'blob'}(s), {report.manifests_checked} "
            f"{'card' if args.folders else 'manifest'}(s){cards}: "
            f"{len(report.problems)} problem(s)"
        )
        if not report.ok:
            sys.stderr.write(
                f"scope-hub verify: error: {len(report.problems)} problem(s) found; "
                "re-push the affected versions or restore the blobs\n"
            )
            return 1
        return 0

    return run


def setup_lock(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "keys",
        metavar="KEY",
        nargs="+",
        help="keys to pin (each at its ref, default latest), Hub folders hf://ORG/REPO/FOLDER[@REV] "
        "or SAELens names saelens://RELEASE/SAE_ID (pinned to the commit they resolve to)",
    )
    parser.add_argument(
        "--out", metavar="FILE", default=DEFAULT_LOCKFILE, help=f"lockfile to write (default {DEFAULT_LOCKFILE})"
    )

    def run(args: argparse.Namespace) -> int:
        from scope_hub.registry.lockfile import Lockfile

        hub = [k for k in args.keys if _is_hub_source(k)]
        keys = [k for k in args.keys if k not in hub]
        lock = _registry(args).lock(keys) if keys else Lockfile()
        for entry in lock.entries:
            print(f"locked {entry.key}@v{entry.version} manifest sha256:{(entry.manifest_sha256 or '')[:12]}")
        if hub:
            from scope_hub.sources import lock_source

            lock = lock.merged([lock_source(source) for source in hub])
            for entry in lock.entries[len(keys) :]:
                print(f"locked {entry.source} at {entry.resolved} sha256:{entry.content_sha256[:12]}")
        lock.save(args.out)
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


def setup_gc(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument(
        "--grace",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="keep unreferenced blobs younger than this, they may belong to a push in flight (default 3600)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only report what would be deleted")

    def run(args: argparse.Namespace) -> int:
        report = _registry(args).gc(grace_seconds=args.grace, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"{verb} {len(report.deleted)} object(s), {human_size(report.bytes_freed)}; "
            f"kept {report.kept_recent} younger than the grace period"
        )
        if report.note:
            print(report.note)
        return 0

    return run


def setup_reindex(parser: argparse.ArgumentParser) -> Runner:
    def run(args: argparse.Namespace) -> int:
        print(f"indexed {_registry(args).reindex()} version(s)")
        return 0

    return run
