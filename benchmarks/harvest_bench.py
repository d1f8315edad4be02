"""Harvest throughput on the real Gemma 3 270M: one layer vs a truncated forward; every layer from one forward.

Suite ``layer6`` (the first table): both read batches of 8 x 128 tokens and stop after decoder layer 6 (no later
layers, no lm_head). The harvest goes through the trainer's path: the model's
own ``forward`` with scope-hub's ``capture`` + ``stop_after`` hooks at
``model.layers.6.output``, then the kept rows (BOS dropped) gathered to a
``[n, 1, 640]`` tensor. The bare forward runs ``model.model`` with its layer list
cut to layers 0..6 and no hooks. Rounds alternate the two; medians of per-round ratios.

Suite ``all_layers``: ``resid_post`` of all 18 layers for 18 dictionaries. *one forward* is the
trainer's multi-dictionary harvester (``harvest.layers=all``: the 18 hookpoints captured in one
forward that stops after layer 17, no final norm, no ``lm_head``); *18 harvests* runs the
single-layer harvester once per layer (what 18 one-dictionary runs do); *bare* runs
``model.model`` (embedding, 18 layers, final norm) with no hooks and no ``lm_head`` (the floor). Before
timing, the rows of the one-forward harvest must equal those of the 18 single-layer harvests
exactly. Arithmetic bound: 18 single-layer harvests run 1 + 2 + ... + 18 = 171 layer forwards
against 18, so their ratio cannot exceed 9.5x (plus the embedding, run 18 times).

    .venv/bin/python -m benchmarks.harvest_bench [--rounds 5] [--only layer6 all_layers] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.device import add_device_argument, resolve_device, synchronize
from benchmarks.summary import Headline, add_summary_argument, write_summary

PARTS = ("layer6", "all_layers")
"""What ``--only`` can pick (the suites)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="batches per candidate per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--suite", choices=["layer6", "all_layers", "both"], default="both")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None, help="suites to run (wins over --suite)")
    add_device_argument(parser)
    add_summary_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = set(args.only) if args.only else ({"layer6", "all_layers"} if args.suite == "both" else {args.suite})

    from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm

    model, tok = load_causal_lm(gemma3_270m_path(progress=False))
    model.to(device)
    args.device = device
    rows = []
    if "layer6" in suites:
        rows += layer6(model, tok, args)
    if "all_layers" in suites:
        rows += all_layers(model, tok, args)
    write_summary(args.summary, rows)


def _timed(fn, device: torch.device) -> float:
    """Seconds ``fn`` takes, GPU work included (clocks read after a synchronize)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def _batches(tok, n: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(1000, 200000, (8, 128), generator=gen) for _ in range(n)]
    for ids in batches:
        ids[:, 0] = tok.bos_token_id
    return [ids.to(device) for ids in batches], torch.ones_like(batches[0]).to(device)


def layer6(model, tok, args) -> list[Headline]:
    from trainers.config import load_config
    from trainers.harvest import Harvester, site_spec

    cfg = load_config(None, ["model.id=google/gemma-3-270m", "harvest.layer=6"])
    harvester = Harvester(model, site_spec(model, cfg), tok.bos_token_id, exclude_bos=True)
    batches, mask = _batches(tok, args.batches, args.device)

    layers = model.model.layers
    truncated = torch.nn.ModuleList(list(layers)[:7])

    @torch.no_grad()
    def bare() -> None:
        model.model.layers = truncated
        try:
            for ids in batches:
                model.model(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            model.model.layers = layers

    def harvest() -> None:
        for ids in batches:
            harvester(ids, mask)

    tokens = len(batches) * batches[0].numel()
    ratios, speeds = [], {"bare": [], "harvest": []}
    harvest(), bare()  # warm-up
    for r in range(args.rounds):
        for name, fn in (
            (("bare", bare), ("harvest", harvest)) if r % 2 == 0 else (("harvest", harvest), ("bare", bare))
        ):
            speeds[name].append(tokens / _timed(fn, args.device))
        ratios.append(speeds["harvest"][-1] / speeds["bare"][-1])
        print(
            f"round {r + 1}: bare {speeds['bare'][-1]:.0f} tok/s, harvest {speeds['harvest'][-1]:.0f} tok/s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"\nmedian: bare forward to layer 6 {statistics.median(speeds['bare']):.0f} tok/s, harvest "
        f"{statistics.median(speeds['harvest']):.0f} tok/s, harvest/bare {statistics.median(ratios):.3f}x "
        f"({torch.get_num_threads()} threads, batch 8 x 128)"
    )
    bare_speed, harvest_speed = statistics.median(speeds["bare"]), statistics.median(speeds["harvest"])
    return [
        Headline(
            "harvest",
            "harvest / bare forward to layer 6 (tok/s)",
            statistics.median(ratios),
            goal=">= 0.95",
            note=f"{harvest_speed:.0f} vs {bare_speed:.0f} tok/s",
        )
    ]


def all_layers(model, tok, args) -> list[Headline]:
    from trainers.config import load_config
    from trainers.harvest import Harvester, site_spec

    n_layers = model.config.num_hidden_layers
    every = load_config(None, ["model.id=google/gemma-3-270m", "harvest.layers=all"])
    one = Harvester(model, site_spec(model, every), tok.bos_token_id, exclude_bos=True)
    singles = [
        Harvester(
            model,
            site_spec(model, load_config(None, ["model.id=google/gemma-3-270m", f"harvest.layer={layer}"])),
            tok.bos_token_id,
            exclude_bos=True,
        )
        for layer in range(n_layers)
    ]
    batches, mask = _batches(tok, max(1, args.batches // 3), args.device)
    # Outputs first: every layer's rows from the one forward equal that layer's own harvest.
    together = one(batches[0], mask)
    for layer, single in enumerate(singles):
        name = f"model.layers.{layer}.output"
        assert torch.equal(together[name], single(batches[0], mask)[name]), name

    @torch.no_grad()
    def bare() -> None:  # model.model: embedding, the 18 layers and the final norm; no hooks, no lm_head
        for ids in batches:
            model.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def one_forward() -> None:
        for ids in batches:
            one(ids, mask)

    def eighteen() -> None:
        for ids in batches:
            for single in singles:
                single(ids, mask)

    tokens = len(batches) * batches[0].numel()
    candidates = {"bare": bare, "one forward": one_forward, "18 harvests": eighteen}
    speeds: dict[str, list[float]] = {name: [] for name in candidates}
    vs_bare, vs_singles = [], []
    bare(), one_forward()  # warm-up
    for r in range(args.rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for name in order:
            speeds[name].append(tokens / _timed(candidates[name], args.device))
        vs_bare.append(speeds["one forward"][-1] / speeds["bare"][-1])
        vs_singles.append(speeds["one forward"][-1] / speeds["18 harvests"][-1])
        print(
            f"round {r + 1}: "
            + ", ".join(f"{name} {speeds[name][-1]:.0f} tok/s" for name in candidates)
            + f"; one/18 {vs_singles[-1]:.2f}x, one/bare {vs_bare[-1]:.3f}x",
            flush=True,
        )
    med = {name: statistics.median(v) for name, v in speeds.items()}
    print(
        f"\nmedian ({n_layers} layers, resid_post): bare stack {med['bare']:.0f} tok/s, one forward "
        f"{med['one forward']:.0f} tok/s, 18 single-layer harvests {med['18 harvests']:.0f} tok/s; "
        f"one / 18 harvests {statistics.median(vs_singles):.2f}x, one / bare {statistics.median(vs_bare):.3f}x"
    )
    return [
        Headline(
            "harvest",
            "18 layers: one forward / 18 single-layer harvests (tok/s)",
            statistics.median(vs_singles),
            goal=">= 10",
            note=f"arithmetic bound 9.5x (171 vs 18 layer forwards); {med['one forward']:.0f} vs "
            f"{med['18 harvests']:.0f} tok/s",
        ),
        Headline(
            "harvest",
            "18 layers: one forward / bare stack without lm_head (tok/s)",
            statistics.median(vs_bare),
            goal=">= 0.9",
            note=f"{med['one forward']:.0f} vs {med['bare']:.0f} tok/s",
        ),
    ]


if __name__ == "__main__":
    main()
