"""Command line: ``python -m trainers CONFIG.yaml key=value ...`` and the ``scope-hub train`` plugin.

The config file fills :class:`trainers.config.TrainConfig`; ``key=value``
arguments override dotted fields (``optim.lr=3e-4 train.tokens=1e8``). Flags:
``--print-config`` prints the resolved config as YAML and exits;
``--harvest-only`` fills ``harvest.cache_dir`` and stops; ``--evaluate FOLDER``
evaluates an existing dictionary on the config's data and records the metrics. Data-parallel:
``torchrun --nproc-per-node N -m trainers CONFIG.yaml``.

Exit codes: 0 done, 143 stopped by SIGTERM after checkpointing (run again to
resume), 2 bad config, 1 other errors.

``scope-hub train`` is the same command, registered by the entry point
``train = "trainers.cli:setup"`` in the ``scope_hub.commands`` group, so
scope_hub itself never imports this package.

Example:
    >>> main(["--print-config", "synthetic.d_in=8", "dictionary.architecture=relu"])  # doctest: +ELLIPSIS
    model:
    ...
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_INTERRUPTED = 143
EXIT_BAD_CONFIG = 2
DESCRIPTION = "Train a sparse dictionary: harvest, train, evaluate, publish."
EPILOG = (
    "Start from trainers/examples/sae.yaml (details: docs/training.md). Exit codes: 0 done, 2 bad config, "
    "143 stopped by SIGTERM after checkpointing (run again to resume), 1 other errors."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments (shared by ``python -m trainers`` and ``scope-hub train``)."""
    parser.description, parser.epilog = DESCRIPTION, EPILOG
    parser.add_argument(
        "config",
        nargs="?",
        help="YAML config file (sections: model, data, harvest, dictionary, "
        "optim, loss, train, eval, output); optional",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--harvest-only", action="store_true", help="harvest into harvest.cache_dir and exit")
    parser.add_argument(
        "--evaluate",
        metavar="FOLDER",
        help="evaluate an existing dictionary folder on the config's "
        "data (held-out rows; delta LM loss if eval.delta_lm_loss) and write its metrics",
    )


def run(args: argparse.Namespace) -> int:
    """Execute a parsed train command; returns the exit code."""
    import yaml

    from trainers.config import load_config

    config_path, overrides = args.config, list(args.overrides)
    if config_path and "=" in config_path:  # only overrides were given
        config_path, overrides = None, [config_path, *overrides]
    registry = getattr(args, "registry", None)
    if registry and not any(o.startswith("output.registry=") for o in overrides):
        overrides.append(f"output.registry={registry}")
    cfg = load_config(config_path, overrides)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    if args.evaluate:
        from trainers.pipeline import evaluate_folder

        metrics = evaluate_folder(args.evaluate, cfg)
        print(
            "  ".join(f"{k}={v:.4g}" for k, v in metrics.model_dump(exclude_none=True, exclude={"per_layer"}).items())
        )
        return 0
    if args.harvest_only:
        from trainers.pipeline import harvest_only

        print(harvest_only(cfg))
        return 0
    from trainers.pipeline import train

    outcome = train(cfg)
    if outcome.interrupted:
        sys.stderr.write(f"stopped at step {outcome.result.steps}; checkpoint in {cfg.train.checkpoint_dir}\n")
        return EXIT_INTERRUPTED
    for part in outcome.parts or [outcome]:  # a run of several dictionaries: one line each
        if part.folder is not None:
            metrics = part.dictionary.config.metrics.model_dump(exclude_none=True, exclude={"per_layer"})
            print(f"{part.folder}  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if part.push is not None:
            push = part.push
            print(
                f"pushed {push.ref}"
                if push.created
                else f"unchanged, v{push.version}: {push.ref} holds identical content"
            )
    return 0


def run_reporting(args: argparse.Namespace, prog: str) -> int:
    """:func:`run`, with scope-hub's errors printed as one line (``PROG: error: ...``): exit code 2 for a
    bad config (fields, layers, sites, keys), 1 for the others.

    ``SCOPE_HUB_DEBUG=1`` lets the error through with its traceback.
    """
    from scope_hub.errors import ConfigError, HookpointError, KeyParseError, ScopeHubError, UnsupportedModelError

    try:
        return run(args)
    except ScopeHubError as exc:  # scope-hub's own errors say what to do: one line, no traceback
        from scope_hub.settings import settings

        if settings().debug:
            raise
        sys.stderr.write(f"{prog}: error: {' '.join(str(exc).split())}\n")
        bad_config = (ConfigError, HookpointError, KeyParseError, UnsupportedModelError)
        return EXIT_BAD_CONFIG if isinstance(exc, bad_config) else 1


def setup(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Train a sparse dictionary: harvest, train, evaluate, publish.

    The ``scope-hub train`` plugin hook (entry point group ``scope_hub.commands``).
    """
    add_arguments(parser)
    return lambda args: run_reporting(args, parser.prog)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainers``: parse ``argv`` and run; config errors exit 2 with one line."""
    parser = argparse.ArgumentParser(prog="python -m trainers")
    add_arguments(parser)
    return run_reporting(parser.parse_args(argv), parser.prog)
