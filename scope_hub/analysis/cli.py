"""``scope-hub dashboard`` and ``scope-hub refusal``: setup functions for the CLI's command seam.

Registered in :mod:`scope_hub.cli` as ``"scope_hub.analysis.cli:setup_dashboard"`` and
``"scope_hub.analysis.cli:setup_refusal"``; nothing heavy is imported until a command runs.

``--model`` takes a transformers folder, a Hub id, or one of the real models scope-hub
converts offline: ``smollm2-135m-instruct``, ``gemma-3-270m`` (their Hub ids fall back to them).

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
from typing import Any, Callable

from scope_hub.model_resolution import NAMED_MODELS

Runner = Callable[[argparse.Namespace], int]


def load_model(spec: str) -> tuple[Any, Any]:
    """(model, tokenizer) for a folder, a named offline model, or a Hub id."""
    from scope_hub.model_resolution import load_model as load

    return load(spec)


def _scoped(args: argparse.Namespace, source: str | None) -> tuple[Any, Any, str | None]:
    from scope_hub.scoped_model import ScopedModel

    model, tokenizer = load_model(args.model)
    sources = {"dictionary": source} if source else {}
    return (
        ScopedModel.from_pretrained(model, dictionaries=sources, registry=args.registry),
        tokenizer,
        ("dictionary" if source else None),
    )


def setup_dashboard(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub dashboard KEY_OR_FOLDER --model PATH --out DIR [--texts FILE | --harvest DIR]``."""
    parser.add_argument("dictionary", metavar="KEY_OR_FOLDER", help="registry key or dictionary folder")
    parser.add_argument(
        "--model", required=True, metavar="PATH", help=f"transformers folder, Hub id, or one of: {', '.join(NAMED_MODELS)}"
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
        from scope_hub.analysis.dashboard import (
            dashboard_from_harvest,
            dashboard_from_texts,
        )
        from scope_hub.analysis.prompts import load_prompts

        scoped, tokenizer, name = _scoped(args, args.dictionary)
        extra = {"include_dead": not args.live_only, "title": f"{args.dictionary} on {args.model}"}
        if args.harvest:
            index = dashboard_from_harvest(
                args.harvest,
                scoped.dictionaries[name],
                tokenizer,
                args.out,
                model=scoped.model,
                top_k=args.top_k,
                **extra,
            )
        else:
            texts = load_prompts(args.texts or "corpus")[: args.max_texts]
            index = dashboard_from_texts(
                scoped,
                name,
                tokenizer,
                texts,
                args.out,
                window=args.window,
                batch_size=args.batch_size,
                top_k=args.top_k,
                **extra,
            )
        print(index)
        return 0

    return run


def setup_refusal(parser: argparse.ArgumentParser) -> Runner:
    """``scope-hub refusal --model PATH [--dictionary KEY_OR_FOLDER] [prompt files] [--out FILE]``."""
    parser.add_argument("--model", required=True, metavar="PATH", help="chat model folder, Hub id, or smollm2-135m-instruct")
    parser.add_argument("--dictionary", metavar="KEY_OR_FOLDER", help="also rank this dictionary's features")
    for flag, default in [
        ("harmful", "harmful_train"),
        ("harmless", "harmless_train"),
        ("heldout-harmful", "harmful_test"),
        ("heldout-harmless", "harmless_test"),
    ]:
        parser.add_argument(
            f"--{flag}", metavar="FILE", default=default, help=f"prompt file (default: shipped {default})"
        )
    parser.add_argument("--layers", metavar="L,L,...", help="candidate layers (default: 1 .. 80%% of depth)")
    parser.add_argument("--score-mode", choices=["phrase", "first_token"], default="phrase")
    parser.add_argument(
        "--generate", type=int, default=0, metavar="N", help="also generate N tokens and report refusal rates"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", metavar="FILE", help="write the Markdown report here (default: stdout)")

    def run(args: argparse.Namespace) -> int:
        from scope_hub.analysis.prompts import load_prompts
        from scope_hub.analysis.refusal import analyze_refusal
        from scope_hub.analysis.scores import RefusalScore

        scoped, tokenizer, name = _scoped(args, args.dictionary)
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        report = analyze_refusal(
            scoped,
            tokenizer,
            harmful=load_prompts(args.harmful),
            harmless=load_prompts(args.harmless),
            heldout_harmful=load_prompts(args.heldout_harmful),
            heldout_harmless=load_prompts(args.heldout_harmless),
            dictionary=name,
            layers=layers,
            score=RefusalScore(mode=args.score_mode),
            top_k=args.top_k,
            generate_tokens=args.generate,
        )
        text = report.to_markdown() + "\n"
        if args.out:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            sys.stdout.write(text)
        return 0

    return run
