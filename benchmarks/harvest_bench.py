"""Harvest throughput on the real Gemma 3 270M vs a bare forward truncated at the same layer.

Both read batches of 8 x 128 tokens and stop after decoder layer 6 (no later
layers, no lm_head). The harvest goes through the trainer's path: the model's
own ``forward`` with scope-hub's ``capture`` + ``stop_after`` hooks at
``model.layers.6.output``, then the kept rows (BOS dropped) gathered to a
``[n, 1, 640]`` tensor. The bare forward runs ``model.model`` with its layer list
cut to layers 0..6 and no hooks. Rounds alternate the two; medians of per-round ratios.

    .venv/bin/python -m benchmarks.harvest_bench [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.summary import Headline, add_summary_argument, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="batches per candidate per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_summary_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from scope_hub.models import gemma3_270m_path, load_causal_lm
    from trainers.config import load_config
    from trainers.harvest import Harvester, site_spec

    model, tok = load_causal_lm(gemma3_270m_path(progress=False))
    cfg = load_config(None, ["model.id=google/gemma-3-270m", "harvest.layer=6"])
    harvester = Harvester(model, site_spec(model, cfg), tok.bos_token_id, exclude_bos=True)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(1000, 200000, (8, 128), generator=gen) for _ in range(args.batches)]
    for ids in batches:
        ids[:, 0] = tok.bos_token_id
    mask = torch.ones_like(batches[0])

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
            t0 = time.perf_counter()
            fn()
            speeds[name].append(tokens / (time.perf_counter() - t0))
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
    write_summary(
        args.summary,
        [
            Headline(
                "harvest",
                "harvest / bare forward to layer 6 (tok/s)",
                statistics.median(ratios),
                goal=">= 0.95",
                note=f"{harvest_speed:.0f} vs {bare_speed:.0f} tok/s",
            )
        ],
    )


if __name__ == "__main__":
    main()
