"""``scope-hub dashboard`` and ``scope-hub refusal``: setup functions for the CLI's command seam.

Registered in :mod:`scope_hub.cli` as ``"scope_hub.analysis.cli:setup_dashboard"`` and
``"scope_hub.analysis.cli:setup_refusal"``; nothing heavy is imported until a command runs.

``--model`` takes a transformers folder, a Hub id, or one of the real models scope-hub
converts offline: ``smollm2-135m-instruct``, ``gemma-3-270m`` (their Hub ids fall back to them).
Every input that can be checked without the model (model folder or Hub id, dictionary folder
or key, prompt files, harvest folder) is checked before the model loads, so a typo fails in well
under a second.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="scope-hub dashboard")
    >>> run = setup_dashboard(parser)
    >>> args = parser.parse_args(["my_sae", "--model", "gemma-3-270m", "--out", "site"])
    >>> args.dictionary, args.window, args.top_k
    ('my_sae', 64, 10)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scope_hub.errors import ConfigError, DictionaryNotFoundError, KeyParseError
from scope_hub.model_resolution import NAMED_MODELS, check_model_spec, load_model_and_tokenizer

if TYPE_CHECKING:
    from scope_hub.scoped_model import ScopedModel

Runner = Callable[[argparse.Namespace], int]


def check_dictionary_source(source: str, registry: str | None) -> str:
    """The folder (``~`` expanded) or key ``source`` names, checked without loading any model.

    Raises :class:`DictionaryNotFoundError` for a missing folder ("no such folder") or a key
    the registry does not hold, :class:`KeyParseError` (wrapped) for text that is neither.

    Example:
        >>> try:
        ...     check_dictionary_source("/tmp/x/nosuch", None)
        ... except DictionaryNotFoundError as exc:
        ...     print(str(exc)[:35])
        /tmp/x/nosuch: no such folder (a di
    """
    from scope_hub.scoped_config import reject_missing_folder
    from scope_hub.sources import is_remote_source

    if is_remote_source(source):
        return source  # a Hub folder or SAELens name: checked when it is downloaded
    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder)
    reject_missing_folder(source)
    from scope_hub.keys import parse_key
    from scope_hub.registry import Registry

    try:
        key = parse_key(source)
    except KeyParseError as exc:
        raise DictionaryNotFoundError(
            f"{source!r} is neither an existing dictionary folder nor a registry key ({exc})"
        ) from None
    Registry(registry).resolve(key)  # raises UnknownKeyError / VersionNotFoundError naming the key
    return source


def checked_prompts(name_or_path: str, flag: str) -> list[str]:
    """Prompts from a shipped set or file; a missing or empty file is an error naming ``flag``.

    Example:
        >>> len(checked_prompts("harmful_test", "--heldout-harmful"))
        16
    """
    from scope_hub.analysis.prompts import load_prompts

    try:
        prompts = load_prompts(name_or_path)
    except (ConfigError, DictionaryNotFoundError) as exc:
        raise type(exc)(f"{flag}: {exc}") from None
    if not prompts:
        raise ConfigError(f"{flag} {name_or_path}: no prompts in this file; give at least one")
    return prompts


_ATTACHED = "dictionary"
"""Name the commands attach their one dictionary under."""


def _scoped(args: argparse.Namespace, source: str | None) -> tuple[ScopedModel, Any]:
    """The model of ``--model`` with ``source`` (if any) attached as :data:`_ATTACHED`, and its tokenizer."""
    from scope_hub.scoped_model import ScopedModel

    model, tokenizer = load_model_and_tokenizer(args.model)
    sources = {_ATTACHED: source} if source else {}
    return ScopedModel.from_pretrained(model, dictionaries=sources, registry=args.registry), tokenizer


def setup_dashboard(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub dashboard KEY_OR_FOLDER --model PATH --out DIR [--texts FILE | --harvest DIR]``."""
    parser.add_argument("dictionary", metavar="KEY_OR_FOLDER", help="registry key or dictionary folder")
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help=f"transformers folder, Hub id, or one of: {', '.join(NAMED_MODELS)}",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (index.html + features/)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--texts", metavar="FILE", help="corpus: one text per line (.txt) or .json/.jsonl (default: shipped corpus)"
    )
    source.add_argument("--harvest", metavar="DIR", help="a trainers harvest folder to read activations from instead")
    parser.add_argument("--window", type=int, default=64, help="tokens per window when reading --texts (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    parser.add_argument(
        "--top-k", type=int, default=10, help="contexts, logits and neighbours per feature (default 10)"
    )
    parser.add_argument("--max-texts", type=int, default=None, help="use only the first N texts")
    parser.add_argument("--live-only", action="store_true", help="write pages only for features active on the corpus")

    def run(args: argparse.Namespace) -> int:
        from scope_hub.analysis.dashboard import dashboard_from_harvest, dashboard_from_texts, dashboard_summary

        dictionary = check_dictionary_source(args.dictionary, args.registry)
        texts: list[str] = []
        if args.harvest:
            if not Path(args.harvest).is_dir():
                raise DictionaryNotFoundError(f"--harvest {args.harvest}: no such folder (a trainers harvest folder)")
        else:
            texts = checked_prompts(args.texts or "corpus", "--texts")[: args.max_texts]
            if not texts:
                raise ConfigError(f"--max-texts {args.max_texts} leaves no texts; give at least 1")
        check_model_spec(args.model)
        scoped, tokenizer = _scoped(args, dictionary)
        title = f"{args.dictionary} on {args.model}"
        if args.harvest:
            index = dashboard_from_harvest(
                args.harvest,
                scoped.dictionaries[_ATTACHED],
                tokenizer,
                args.out,
                model=scoped.model,
                top_k=args.top_k,
                include_dead=not args.live_only,
                title=title,
            )
        else:
            index = dashboard_from_texts(
                scoped,
                _ATTACHED,
                tokenizer,
                texts,
                args.out,
                window=args.window,
                batch_size=args.batch_size,
                top_k=args.top_k,
                include_dead=not args.live_only,
                title=title,
            )
        summary = dashboard_summary(index)
        print(index)
        print(
            f"{summary.pages} feature pages written; {summary.live} of {summary.features} features live "
            f"(active on the corpus), {summary.features - summary.live} dead; {summary.bytes / 1e6:.1f} MB in all"
        )
        return 0

    return run


def setup_refusal(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub refusal --model PATH [--dictionary KEY_OR_FOLDER] [prompt files] [--out FILE]``."""
    parser.add_argument(
        "--model", required=True, metavar="PATH", help="chat model folder, Hub id, or smollm2-135m-instruct"
    )
    parser.add_argument("--dictionary", metavar="KEY_OR_FOLDER", help="also rank this dictionary's features")
    for flag, default in [
        ("harmful", "harmful_train"),
        ("harmless", "harmless_train"),
        ("heldout-harmful", "harmful_test"),
        ("heldout-harmless", "harmless_test"),
    ]:
        parser.add_argument(
            f"--{flag}",
            metavar="FILE",
            default=default,
            help=f"prompt file, one per line (default: shipped {default}); harmful and harmless sets are "
            "averaged separately, so their sizes may differ",
        )
    parser.add_argument("--layers", metavar="L,L,...", help="candidate layers (default: 1 .. 80%% of depth)")
    parser.add_argument("--score-mode", choices=["phrase", "first_token"], default="phrase")
    parser.add_argument(
        "--generate", type=int, default=0, metavar="N", help="also generate N tokens and report refusal rates"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", metavar="FILE", help="write the Markdown report here (default: stdout)")

    def run(args: argparse.Namespace) -> int:
        from scope_hub.analysis.refusal import analyze_refusal
        from scope_hub.analysis.scores import RefusalScore

        harmful, harmless, heldout_harmful, heldout_harmless = (
            checked_prompts(getattr(args, flag), f"--{flag.replace('_', '-')}")
            for flag in ("harmful", "harmless", "heldout_harmful", "heldout_harmless")
        )
        try:
            layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        except ValueError:
            raise ConfigError(f"--layers {args.layers}: give comma-separated integers, e.g. --layers 10,14") from None
        dictionary = check_dictionary_source(args.dictionary, args.registry) if args.dictionary else None
        check_model_spec(args.model)
        scoped, tokenizer = _scoped(args, dictionary)
        report = analyze_refusal(
            scoped,
            tokenizer,
            harmful=harmful,
            harmless=harmless,
            heldout_harmful=heldout_harmful,
            heldout_harmless=heldout_harmless,
            dictionary=_ATTACHED if dictionary else None,
            layers=layers,
            score=RefusalScore(mode=args.score_mode),
            top_k=args.top_k,
            generate_tokens=args.generate,
            model_name=args.model,
        )
        text = report.to_markdown() + "\n"
        if args.out:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            sys.stdout.write(text)
        return 0

    return run
