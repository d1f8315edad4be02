"""Every layer at once, and low precision: 18 JumpReLU SAEs spliced into all 18 layers of Gemma 3 270M.

Real Gemma 3 270M, batch 8 x 128 tokens (``--batch``/``--seq``), one JumpReLU SAE 640 -> 16,384
per layer (``resid_post``), thresholds set for L0 ~ 64 on that layer's real activations.
Candidates, run round-robin (one of each per repeat; medians; "paired" = median of per-repeat
ratios):

* HF bare forward;
* floor: HF forward with 18 hand-written forward hooks doing the same JumpReLU encode/decode;
* ScopedModel: the 18 SAEs attached, ``with sm.splice(): sm(ids)``;
* SAELens ``HookedSAETransformer.run_with_saes`` with the same 18 SAEs (fp32 only).

``--dtype bfloat16``: the model and the SAEs in bf16 (ScopedModel moves dictionaries to the
model's dtype); splice vs the same floor in bf16. Before timing, the fp32 run checks that our
spliced logits equal the floor's and that SAELens's are close; the bf16 run checks features at
every layer (observe mode, no splice) against the fp32 model's, as the worst relative L2 error
of the feature values and the worst overlap (Jaccard) of the active sets over layers: bf16 SAEs
on the fp32 model's activations (the dictionaries' own precision, ``--feature-rtol``) and bf16
model + bf16 SAEs end to end (the model's bf16 forward drifts too, ``--end-to-end-rtol``).

    .venv/bin/python benchmarks/every_layer_bench.py                     # fp32, with SAELens
    .venv/bin/python benchmarks/every_layer_bench.py --dtype bfloat16    # bf16 vs bf16 floor
    .venv/bin/python benchmarks/every_layer_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.device import add_device_argument, resolve_device, synchronize
from benchmarks.scoped_model_bench import activation_sae, bench, load_tl, saelens_sae, try_saelens
from benchmarks.summary import Headline, add_summary_argument, write_summary
from scope_hub.dictionaries import SAE
from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm
from scope_hub.scoped_model import ScopedModel

D_IN, D_SAE, N_LAYERS, TARGET_L0 = 640, 16384, 18, 64


def make_saes(model, ids: torch.Tensor) -> list[SAE]:
    """One JumpReLU SAE per layer, thresholds set for L0 ~ 64 on that layer's activations."""
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: outputs.setdefault(i, o.detach()))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        with torch.no_grad():
            model(ids[:2], logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    return [activation_sae(outputs[i], i, seed=i) for i in range(N_LAYERS)]


def floor_call(model, saes: list[SAE], ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    """HF forward with 18 plain forward hooks doing the SAEs' JumpReLU splice (the hand-written floor)."""
    weights = [(s.w_enc, s.b_enc, s.threshold, s.w_dec, s.b_dec) for s in saes]

    def splice(params):
        w_enc, b_enc, thr, w_dec, b_dec = params

        def hook(module, args, out):
            pre = out @ w_enc + b_enc
            return (torch.relu(pre) * (pre > thr)) @ w_dec + b_dec

        return hook

    def call() -> torch.Tensor:
        hooks = [layer.register_forward_hook(splice(p)) for layer, p in zip(model.model.layers, weights)]
        try:
            with torch.no_grad():
                return model(ids).logits
        finally:
            for h in hooks:
                h.remove()

    return call


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        return fn

    def call() -> object:
        synchronize(device)  # nothing queued earlier may land in this call's time
        out = fn()
        synchronize(device)
        return out

    return call


def fp32_reference(model, saes: list[SAE], ids: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
    """fp32 features at every layer (observe mode, no splice) and the layer outputs they came from."""
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outputs.append(o.detach())) for layer in model.model.layers]
    sm = ScopedModel.from_pretrained(model, dictionaries={f"layer_{i}": s for i, s in enumerate(saes)})
    try:
        with torch.no_grad():
            _, cache = sm.run_with_cache(ids)
    finally:
        for h in hooks:
            h.remove()
        sm.detach()
    return {name: f.float().cpu() for name, f in cache.items()}, outputs


def feature_error(reference: dict, low: dict) -> tuple[float, float]:
    """Worst relative L2 error of the values active in both, and worst Jaccard overlap of active sets.

    A JumpReLU latent near its threshold flips between 0 and ~threshold under any rounding, so
    flips are counted by the overlap and values are compared where both are active.
    """
    worst_rel, worst_overlap = 0.0, 1.0
    for name, ref in reference.items():
        f = low[name].float().cpu()
        a, b = ref > 0, f > 0
        both = a & b
        rel = float((f[both] - ref[both]).norm() / ref[both].norm())
        overlap = float((a & b).sum() / (a | b).sum().clamp_min(1))
        worst_rel, worst_overlap = max(worst_rel, rel), min(worst_overlap, overlap)
    return worst_rel, worst_overlap


def check_low_precision(reference: dict, acts: list[torch.Tensor], saes: list[SAE], low: dict, args) -> list[float]:
    """bf16 dictionaries on the fp32 activations (their own precision), and bf16 end to end."""
    with torch.no_grad():
        own = {f"layer_{i}": s.encode(x.to(torch.bfloat16)) for i, (s, x) in enumerate(zip(saes, acts))}
    own_rel, own_overlap = feature_error(reference, own)
    all_rel, all_overlap = feature_error(reference, low)
    print(
        f"check: bf16 SAEs on the fp32 model's activations: worst relative L2 error of shared active values {own_rel:.4f} "
        f"(tolerance {args.feature_rtol}), active-set overlap >= {own_overlap:.3f} (tolerance {args.active_overlap})"
    )
    print(
        f"check: bf16 model + bf16 SAEs end to end: worst relative L2 error of shared active values {all_rel:.4f} "
        f"(tolerance {args.end_to_end_rtol}), active-set overlap >= {all_overlap:.3f} (tolerance {args.active_overlap})"
    )
    if (
        own_rel > args.feature_rtol
        or all_rel > args.end_to_end_rtol
        or min(own_overlap, all_overlap) < args.active_overlap
    ):
        raise SystemExit("bf16 features differ from fp32 beyond the stated tolerance: not timing")
    return [own_rel, own_overlap, all_rel, all_overlap]


PARTS = ("bare", "splice", "saelens")
"""What ``--only`` can pick besides the floor (always run: every ratio is against it)."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    add_device_argument(ap)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="candidates timed with the floor")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument(
        "--feature-rtol", type=float, default=0.02, help="bf16 SAEs on fp32 activations: max relative L2 error"
    )
    ap.add_argument(
        "--end-to-end-rtol", type=float, default=0.05, help="bf16 model + SAEs: max relative L2 error of features"
    )
    ap.add_argument("--active-overlap", type=float, default=0.9, help="bf16: min Jaccard overlap of active sets")
    add_summary_argument(ap)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device, low = resolve_device(args.device), args.dtype == "bfloat16"
    model, tok = load_causal_lm(gemma3_270m_path())
    model.requires_grad_(False).to(device)
    torch.manual_seed(0)
    ids = torch.randint(1000, 200_000, (args.batch, args.seq), device=device)
    ids[:, 0] = tok.bos_token_id
    saes = make_saes(model, ids)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}, "
        f"{args.batch} x {args.seq} tokens, 18 JumpReLU SAEs {D_IN} -> {D_SAE}"
    )
    reference, acts = fp32_reference(model, saes, ids[:2]) if low else (None, None)
    if low:
        model.to(torch.bfloat16)
        saes = [s.to(torch.bfloat16) for s in saes]
    sm = ScopedModel.from_pretrained(model, dictionaries={f"layer_{i}": s for i, s in enumerate(saes)})
    floor = floor_call(model, saes, ids)

    def ours() -> torch.Tensor:
        with torch.no_grad(), sm.splice():
            return sm(ids).logits

    def bare() -> torch.Tensor:
        with torch.no_grad():
            return model(ids).logits

    fns = {"HF bare": bare, "floor: 18 hand-written hooks": floor, "ScopedModel splice (18 SAEs)": ours}
    worst = None
    if low:
        with torch.no_grad():
            _, cache = sm.run_with_cache(ids[:2])
        worst = check_low_precision(reference, acts, saes, cache, args)
    diff = (ours() - floor()).abs().max().item()
    print(f"check: |ScopedModel - floor| max over the logits = {diff:.2e}")
    if diff > (0.0 if device.type == "cpu" and not low else 1e-2):
        raise SystemExit("ScopedModel's splice differs from the hand-written floor: not timing")
    use_sl = "saelens" in args.only and not low and not args.no_saelens and try_saelens()
    if use_sl:
        tl = load_tl(model, tok)
        sl_saes = [saelens_sae(s, layer=i) for i, s in enumerate(saes)]
        tl.to(device)

        def saelens() -> torch.Tensor:
            with torch.no_grad():
                return tl.run_with_saes(ids, saes=sl_saes)

        sl_diff = (saelens().float() - floor().float()).abs().max().item()
        print(f"check: |SAELens run_with_saes - floor| max = {sl_diff:.2e} (TransformerLens's own forward)")
        fns["SAELens run_with_saes (18 SAEs)"] = saelens
    if "bare" not in args.only:
        del fns["HF bare"]
    if "splice" not in args.only:
        del fns["ScopedModel splice (18 SAEs)"]
    times = bench({name: synced(fn, device) for name, fn in fns.items()}, args.repeats)
    base = "floor: 18 hand-written hooks"
    print(f"\n{'candidate':40s} {'median s':>9s} {'/ floor (paired)':>17s}")
    for name, ts in times.items():
        paired = statistics.median(t / f for t, f in zip(ts, times[base]))
        print(f"{name:40s} {statistics.median(ts):9.3f} {paired:16.3f}x")
    write_summary(args.summary, headlines(times, args.dtype, worst))


def headlines(times: dict, dtype: str, worst: list[float] | None) -> list[Headline]:
    def paired(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(times[num], times[den]))

    tag = "bf16" if dtype == "bfloat16" else "fp32"
    ours = "ScopedModel splice (18 SAEs)"
    if ours not in times:  # --only without splice: no ratio to ours
        return []
    rows = [
        Headline(
            "every_layer",
            f"splice 18 SAEs / floor with 18 hooks ({tag})",
            paired(ours, "floor: 18 hand-written hooks"),
            goal="<= 1.05" if tag == "bf16" else "<= 1.10",
            note=f"{statistics.median(times[ours]):.2f} s per 1024 tokens",
        )
    ]
    if "SAELens run_with_saes (18 SAEs)" in times:
        rows.append(
            Headline(
                "every_layer",
                "SAELens run_with_saes / ours, 18 SAEs (fp32)",
                paired("SAELens run_with_saes (18 SAEs)", ours),
                note="same 18 SAEs; TransformerLens forward",
            )
        )
    if worst is not None:
        rows.append(
            Headline(
                "every_layer",
                "bf16 SAEs on fp32 activations: worst relative L2 error of features",
                worst[0],
                unit="",
                goal="<= 0.02",
                note=f"active-set overlap >= {worst[1]:.3f}; end to end (bf16 model too): {worst[2]:.3f}, "
                f"overlap >= {worst[3]:.3f}",
            )
        )
    return rows


if __name__ == "__main__":
    main()
