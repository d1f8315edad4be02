"""ScopedModel vs a bare HF forward, a hand-written hook, and SAELens.

Measures, side by side in one process on the real Gemma 3 270M (fp32, batch
8 x 128 tokens), one JumpReLU SAE 640 -> 16384 at layer 6 ``resid_post``:

1. full logits:  HF bare / floor (HF + hand-written JumpReLU forward hook) /
   ``ScopedModel.splice()`` / TransformerLens bare / SAELens ``run_with_saes``;
2. last-position logits: the same with ``logits_to_keep=1`` (SAELens: ``return_type=None``,
   which skips the unembedding entirely);
3. features only: HF stopped after layer 6 (+ hand-written encode) /
   ``ScopedModel.run_with_cache(stop_after_last=True)`` / SAELens
   ``run_with_cache_with_saes(stop_at_layer=7)`` and ``run_with_cache`` + ``sae.encode``;
4. lazy attach of 18 layer SAEs (84 MB each, saved first in both formats), warm
   and cold page cache: ``ScopedModel.from_pretrained(model, {18 folders}, lazy=True)`` vs
   SAELens ``SAE.load_from_disk`` x 18.

Timings are medians over repeats; within a group the variants run round-robin
(one of each per repeat) so drift hits them alike. Ratios are computed against
baselines measured in the same run. SAELens rows are skipped with a message when
``sae_lens`` is not importable.

Usage::

    .venv/bin/python benchmarks/scoped_model_bench.py            # 5 repeats (several minutes)
    .venv/bin/python benchmarks/scoped_model_bench.py --quick    # 3 repeats, fewer attach runs
    .venv/bin/python benchmarks/scoped_model_bench.py --only attach --repeats 9
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.device import add_device_argument, resolve_device, synchronize  # noqa: E402
from benchmarks.summary import Headline, add_summary_argument, write_summary  # noqa: E402
from scope_hub.dictionaries import SAE  # noqa: E402
from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm  # noqa: E402
from scope_hub.metadata import DictionaryConfig  # noqa: E402
from scope_hub.scoped_model import ScopedModel  # noqa: E402

D_IN, D_SAE, LAYER, N_LAYERS = 640, 16384, 6, 18
BATCH, SEQ = 8, 128
TOKENS = BATCH * SEQ
TARGET_L0 = 64


# --- timing ------------------------------------------------------------------------------
DEVICE = torch.device("cpu")
"""Where the model, inputs and dictionaries live (``--device``)."""
CPU_TIMES: dict[str, list[float]] = {}
"""Process CPU seconds per call (all threads), by variant: a second view when the machine is shared."""


def bench(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    before_each: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call (wall clock by default) for each fn, round-robin: every repeat runs each fn once."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name in fns:
        CPU_TIMES[name] = []
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            if before_each is not None:
                before_each()
            gc.collect()
            synchronize(DEVICE)  # GPU work is queued: clocks are read only once it is done
            c0, t0 = time.process_time(), clock()
            out = fn()
            synchronize(DEVICE)
            dt, dc = clock() - t0, time.process_time() - c0
            del out
            if r >= warmup:
                times[name].append(dt)
                CPU_TIMES[name].append(dc)
    return times


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def spread(ts: list[float]) -> str:
    m = med(ts)
    return f"{(min(ts) / m - 1) * 100:+.0f}/{(max(ts) / m - 1) * 100:+.0f}%"


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def group(
        self, title: str, times: dict[str, list[float]], tokens: int | None = TOKENS, base: str | None = None
    ) -> None:
        print(f"\n== {title}")
        head = f"{'variant':<44} {'median':>10} {'spread':>11}"
        head += f" {'tok/s':>8}" if tokens else ""
        head += f"  {'x ' + base:>16}" if base else ""
        print(head)
        for name, ts in times.items():
            m = med(ts)
            line = f"{name:<44} {m * 1e3:>8.1f}ms {spread(ts):>11}"
            if tokens:
                line += f" {tokens / m:>8.0f}"
            if base:
                line += f"  {m / med(times[base]):>15.3f}x"
            print(line)
            self.rows.append(
                {"group": title, "variant": name, "median_s": m, "times_s": ts, "cpu_s": CPU_TIMES.get(name)}
            )
        print(
            f"(load average after: {os.getloadavg()[0]:.2f}; this benchmark keeps ~2 busy, well above 2 means "
            "other jobs shared the 2 cores)"
        )

    def ratio(self, label: str, times: dict[str, list[float]], num: str, den: str) -> float:
        """Ratio of medians, plus the median of per-round ratios (each round runs both
        back to back, so it is less sensitive to load that drifts over the run)."""
        r = med(times[num]) / med(times[den])
        paired = statistics.median(a / b for a, b in zip(times[num], times[den]))
        best = min(times[num]) / min(times[den])
        cpu = med(CPU_TIMES[num]) / med(CPU_TIMES[den]) if CPU_TIMES.get(num) and CPU_TIMES.get(den) else float("nan")
        print(
            f"  {label}: {r:.3f}x  ({med(times[num]) * 1e3:.1f} ms / {med(times[den]) * 1e3:.1f} ms; "
            f"paired {paired:.3f}x, min/min {best:.3f}x, cpu-time {cpu:.3f}x)"
        )
        self.rows.append(
            {"ratio": label, "value": r, "paired": paired, "min_ratio": best, "cpu_ratio": cpu, "num": num, "den": den}
        )
        return r


# --- models and SAEs ---------------------------------------------------------------------
def resid_sae_config(layer: int) -> DictionaryConfig:
    """The config of every benchmark SAE: JumpReLU 640 -> 16384 on Gemma 3 270M's resid_post at ``layer``."""
    return DictionaryConfig(
        type="sae",
        architecture="jumprelu",
        d_in=D_IN,
        d_sae=D_SAE,
        model="google/gemma-3-270m",
        site="resid_post",
        layer=layer,
    )


def activation_sae(acts: torch.Tensor, layer: int, seed: int) -> SAE:
    """A random JumpReLU SAE 640 -> 16384 at ``layer``, its threshold set for L0 ~ 64 on ``acts``
    (that layer's real activations); frozen, on the activations' device."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(resid_sae_config(layer))
    with torch.no_grad():
        sae.w_enc.copy_(torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5)
        sae.w_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5)
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.randn(D_IN, generator=g) * 0.01)
        pre = (acts.reshape(-1, D_IN).float().cpu() @ sae.w_enc).flatten()
        q = 1 - TARGET_L0 / D_SAE
        sae.threshold.fill_(pre.kthvalue(int(q * pre.numel())).values.item())
    sae.requires_grad_(False)
    return sae.to(acts.device)


def make_sae(model, ids: torch.Tensor) -> SAE:
    """A JumpReLU SAE 640 -> 16384 for layer 6, thresholds set for L0 ~ 64 on real activations."""
    acts = {}
    h = model.model.layers[LAYER].register_forward_hook(lambda m, a, o: acts.setdefault("x", o))
    try:
        with torch.no_grad():
            model(ids[:2], logits_to_keep=1)
    finally:
        h.remove()
    return activation_sae(acts["x"], LAYER, seed=0)


def saelens_sae(sae: SAE, layer: int = LAYER):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = JumpReLUSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        dtype="float32",
        device=str(sae.w_enc.device),
        apply_b_dec_to_input=False,  # Gemma Scope math: x @ W_enc + b_enc
        metadata=SAEMetadata(model_name="google/gemma-3-270m", hook_name=f"blocks.{layer}.hook_resid_post"),
    )
    sl = JumpReLUSAE(cfg)
    sl.load_state_dict(
        {
            "W_enc": sae.w_enc.detach().clone(),
            "W_dec": sae.w_dec.detach().clone(),
            "b_enc": sae.b_enc.detach().clone(),
            "b_dec": sae.b_dec.detach().clone(),
            "threshold": sae.threshold.detach().clone(),
        }
    )
    sl.requires_grad_(False)
    return sl.eval()


def try_saelens():
    try:
        import sae_lens  # noqa: F401
        from sae_lens import HookedSAETransformer  # noqa: F401

        return True
    except Exception as exc:  # ImportError, or a broken install
        print(f"!! sae_lens is not importable ({type(exc).__name__}: {exc}); SAELens rows are skipped")
        return False


class _Stop(Exception):
    pass


def hand_hooks(sae: SAE):
    """The floor: plain torch forward hooks doing the same JumpReLU math as the SAE."""
    w_enc, b_enc, thr = sae.w_enc.detach(), sae.b_enc.detach(), sae.threshold.detach()
    w_dec, b_dec = sae.w_dec.detach(), sae.b_dec.detach()

    def encode(x):
        pre = x @ w_enc + b_enc
        return torch.relu(pre) * (pre > thr)

    def splice(module, args, out):
        return encode(out) @ w_dec + b_dec

    feats: dict = {}

    def features_and_stop(module, args, out):
        feats["f"] = encode(out)
        raise _Stop

    def stop(module, args, out):
        feats["x"] = out
        raise _Stop

    return splice, features_and_stop, stop, feats


def with_hook(module, fn, call):
    h = module.register_forward_hook(fn)
    try:
        return call()
    except _Stop:
        return None
    finally:
        h.remove()


def load_tl(model, tok):
    from sae_lens import HookedSAETransformer

    # TransformerLens knows gemma-3-270m's architecture by name (no config fetch); with
    # hf_model= it converts the already-loaded weights instead of downloading them.
    return HookedSAETransformer.from_pretrained_no_processing(
        "google/gemma-3-270m", hf_model=model, tokenizer=tok, device=str(DEVICE), dtype=torch.float32
    )


# --- groups ------------------------------------------------------------------------------
def forward_groups(rep: Report, model, tok, repeats: int, use_sl: bool, only: set[str]) -> None:
    torch.manual_seed(0)
    ids = torch.randint(1000, 200_000, (BATCH, SEQ))
    ids[:, 0] = tok.bos_token_id
    ids = ids.to(DEVICE)
    sae = make_sae(model, ids)
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": sae})
    layer = model.model.layers[LAYER]
    splice_fn, feats_fn, stop_fn, feats = hand_hooks(sae)
    tl = sl = None
    if use_sl:
        t0 = time.perf_counter()
        tl = load_tl(model, tok)
        sl = saelens_sae(sae)
        print(f"TransformerLens model built from the loaded HF model in {time.perf_counter() - t0:.1f} s")
    hook_name = f"blocks.{LAYER}.hook_resid_post"
    acts_name = hook_name + ".hook_sae_acts_post"

    # --- equivalence checks (once, untimed) ---
    with torch.no_grad():
        ours = sm.splice()(ids[:2]).logits
        floor = with_hook(layer, splice_fn, lambda: model(ids[:2]).logits)
        print(
            f"check: |ours - floor| max = {(ours - floor).abs().max().item():.2e} "
            f"(logit scale {floor.abs().max().item():.1f})"
        )
        _, cache = sm.run_with_cache(ids[:2], stop_after_last=True)
        with_hook(layer, feats_fn, lambda: model(ids[:2]))
        print(
            f"check: features ours vs hand max diff = {(cache['sae'] - feats['f']).abs().max().item():.2e}, "
            f"L0 = {(cache['sae'] > 0).sum(-1).float().mean().item():.1f}"
        )
        if use_sl:
            sl_logits = tl.run_with_saes(ids[:2], saes=[sl])
            print(f"check: |SAELens - floor| max = {(sl_logits - floor).abs().max().item():.2e}")
            _, c = tl.run_with_cache_with_saes(ids[:2], saes=[sl], stop_at_layer=LAYER + 1, names_filter=acts_name)
            print(f"check: features SAELens vs ours max diff = {(c[acts_name] - cache['sae']).abs().max().item():.2e}")
        del ours, floor, cache
    splice_mode = sm.splice()

    if "full" in only:
        fns = {
            "hf_bare": lambda: model(ids),
            "floor (hf + hand hook)": lambda: with_hook(layer, splice_fn, lambda: model(ids)),
            "scope_hub splice()": lambda: splice_mode(ids),
        }
        if use_sl:
            fns["tl_bare"] = lambda: tl(ids)
            fns["saelens run_with_saes"] = lambda: tl.run_with_saes(ids, saes=[sl])
        with torch.no_grad():
            t = bench(fns, repeats)
        rep.group("full logits [8x128]", t, base="floor (hf + hand hook)")
        rep.ratio("splice / floor (full logits)", t, "scope_hub splice()", "floor (hf + hand hook)")
        rep.ratio("splice / hf_bare (full logits)", t, "scope_hub splice()", "hf_bare")
        rep.ratio("floor / hf_bare (full logits)", t, "floor (hf + hand hook)", "hf_bare")
        if use_sl:
            rep.ratio("SAELens / splice (full logits)", t, "saelens run_with_saes", "scope_hub splice()")
            rep.ratio("SAELens / floor (full logits)", t, "saelens run_with_saes", "floor (hf + hand hook)")
            rep.ratio("tl_bare / hf_bare", t, "tl_bare", "hf_bare")

    if "keep1" in only:
        fns = {
            "hf_bare logits_to_keep=1": lambda: model(ids, logits_to_keep=1),
            "floor logits_to_keep=1": lambda: with_hook(layer, splice_fn, lambda: model(ids, logits_to_keep=1)),
            "scope_hub splice() logits_to_keep=1": lambda: splice_mode(ids, logits_to_keep=1),
        }
        if use_sl:
            fns["saelens run_with_saes return_type=None"] = lambda: tl.run_with_saes(ids, saes=[sl], return_type=None)
        with torch.no_grad():
            t = bench(fns, repeats)
        rep.group("last-position logits [8x128]", t, base="floor logits_to_keep=1")
        rep.ratio(
            "splice / floor (logits_to_keep=1)", t, "scope_hub splice() logits_to_keep=1", "floor logits_to_keep=1"
        )
        rep.ratio(
            "splice / hf_bare (logits_to_keep=1)", t, "scope_hub splice() logits_to_keep=1", "hf_bare logits_to_keep=1"
        )
        if use_sl:
            rep.ratio(
                "SAELens(no unembed) / splice(logits_to_keep=1)",
                t,
                "saelens run_with_saes return_type=None",
                "scope_hub splice() logits_to_keep=1",
            )

    if "features" in only:
        fns = {
            "hf stopped after layer 6": lambda: with_hook(layer, stop_fn, lambda: model(ids)),
            "hf stopped after 6 + hand encode": lambda: with_hook(layer, feats_fn, lambda: model(ids)),
            "scope_hub run_with_cache(stop_after_last)": lambda: sm.run_with_cache(ids, stop_after_last=True),
        }
        if use_sl:
            fns["saelens run_with_cache_with_saes(stop_at_layer=7)"] = lambda: tl.run_with_cache_with_saes(
                ids, saes=[sl], stop_at_layer=LAYER + 1, names_filter=acts_name
            )
            fns["saelens run_with_cache(stop_at_layer=7) + encode"] = lambda: sl.encode(
                tl.run_with_cache(ids, stop_at_layer=LAYER + 1, names_filter=hook_name)[1][hook_name]
            )
        with torch.no_grad():
            t = bench(fns, repeats)
        rep.group("features only, layer 6 [8x128]", t, base="hf stopped after 6 + hand encode")
        rep.ratio(
            "features / (hf stop6 + hand encode)",
            t,
            "scope_hub run_with_cache(stop_after_last)",
            "hf stopped after 6 + hand encode",
        )
        rep.ratio("features / hf stop6", t, "scope_hub run_with_cache(stop_after_last)", "hf stopped after layer 6")
        if use_sl:
            best = min(
                (
                    "saelens run_with_cache_with_saes(stop_at_layer=7)",
                    "saelens run_with_cache(stop_at_layer=7) + encode",
                ),
                key=lambda k: med(t[k]),
            )
            rep.ratio(
                f"SAELens best ({best.split('(')[0].strip()}) / features",
                t,
                best,
                "scope_hub run_with_cache(stop_after_last)",
            )
    tl = sl = sm = None  # free the models before the next group (closures above still name them)


# --- load-independent view: same kernels + fixed Python overhead ------------------------------
def op_census(call: Callable[[], object]) -> dict[str, int]:
    """aten ops dispatched by ``call`` (name -> count)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    counts: Counter = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count(), contextlib.suppress(_Stop):
        call()
    return dict(counts)


def overhead_group(rep: Report, model, tok, repeats: int) -> None:
    """Which extra kernels scope-hub runs vs the floor, and its fixed per-call cost.

    On a shared machine the forward timings swing by tens of percent; two things that do
    not depend on load bound the ratio instead: (1) the aten ops dispatched in a whole
    forward (ours minus floor), (2) the per-call overhead measured on a 1 x 8 input (min
    over many calls, dominated by Python, not by the 640 x 16384 matmuls).
    """
    torch.manual_seed(0)
    ids = torch.randint(1000, 200_000, (BATCH, SEQ)).to(DEVICE)
    sae = make_sae(model, ids)
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": sae})
    layer = model.model.layers[LAYER]
    splice_fn, feats_fn, _stop_fn, _feats = hand_hooks(sae)
    small = ids[:1, :8]
    splice_mode = sm.splice()
    pairs = {
        "splice (full logits)": (lambda: splice_mode(small), lambda: with_hook(layer, splice_fn, lambda: model(small))),
        "splice, logits_to_keep=1": (
            lambda: splice_mode(small, logits_to_keep=1),
            lambda: with_hook(layer, splice_fn, lambda: model(small, logits_to_keep=1)),
        ),
        "features (stop after layer 6)": (
            lambda: sm.run_with_cache(small, stop_after_last=True),
            lambda: with_hook(layer, feats_fn, lambda: model(small)),
        ),
    }
    print("\n== op census, whole forward, scope-hub vs floor (aten ops; differences only)")
    with torch.no_grad():
        for label, (ours, floor) in pairs.items():
            a, b = op_census(ours), op_census(floor)
            diff = {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}
            print(f"  {label}: {sum(a.values())} ops vs {sum(b.values())}; extra: {diff or 'none'}")
            rep.rows.append({"op_census": label, "ours": sum(a.values()), "floor": sum(b.values()), "extra": diff})
    fns = {}
    for label, (ours, floor) in pairs.items():
        fns[f"{label} / scope_hub"] = ours
        fns[f"{label} / floor"] = floor
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny input: keep all work on this thread so thread_time sees it
    try:
        with torch.no_grad():
            t = bench(fns, max(30, repeats * 10), warmup=3, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    print(
        "\n== fixed per-call overhead on a 1 x 8 input, 1 thread, CPU time of this thread "
        "(min of many calls: waiting for other jobs is not counted)"
    )
    for label in pairs:
        o, f = min(t[f"{label} / scope_hub"]), min(t[f"{label} / floor"])
        print(f"  {label}: scope_hub {o * 1e3:.2f} ms, floor {f * 1e3:.2f} ms, overhead {(o - f) * 1e3:+.2f} ms")
        rep.rows.append({"overhead": label, "ours_min_s": o, "floor_min_s": f})


# The speed goals; DESIGN.md section 9: SAELens's full-logits run is only 1.37-1.41x the floor,
# so ">= 1.5x" is reachable only where the unembedding is skipped (last-position logits, features).
GOALS = {
    "splice / floor (full logits)": ("<= 1.05", "vs HF forward + hand-written JumpReLU hook"),
    "splice / hf_bare (full logits)": (None, "splice cost over a bare forward"),
    "SAELens / splice (full logits)": (">= 1.5", "SAELens run_with_saes; floor-bound, see DESIGN.md section 9"),
    "SAELens(no unembed) / splice(logits_to_keep=1)": (">= 1.5", "last-position logits"),
    "SAELens / ours (attach, warm)": (">= 5", "18 layer SAEs, warm page cache"),
    "SAELens / ours (attach, cold)": (">= 5", "18 layer SAEs, cold page cache"),
    "SAELens / floor (attach, warm)": (None, "the most any lazy loader can win: safe_open x18 = floor"),
    "SAELens / floor (attach, cold)": (None, "the most any lazy loader can win: safe_open x18 = floor"),
}


def headlines(rep: Report) -> list[Headline]:
    rows = []
    for row in rep.rows:
        label = row.get("ratio", "")
        if label.startswith("SAELens best"):
            goal, note = ">= 1.5", "features only (" + label.split("(")[1].split(")")[0] + " vs ours)"
        elif label in GOALS:
            goal, note = GOALS[label]
        else:
            continue
        rows.append(
            Headline("scoped_model", label, row["value"], goal=goal, note=f"{note}; paired {row['paired']:.2f}x")
        )
    return rows


# --- lazy attach -------------------------------------------------------------------------
def write_18(root: Path, use_sl: bool) -> tuple[list[Path], list[Path]]:
    g = torch.Generator().manual_seed(1)
    ours, theirs = [], []
    base = SAE(resid_sae_config(0))
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        base.threshold.abs_()
    for i in range(N_LAYERS):
        base.config = base.config.model_copy(update={"layer": i})
        ours.append(base.save_pretrained(root / "ours" / f"layer_{i}"))
        if use_sl:
            sl = saelens_sae(base, layer=i)
            path = root / "saelens" / f"layer_{i}"
            sl.save_model(path)
            theirs.append(path)
    return ours, theirs


def evict(paths: list[Path], use_drop_caches: bool) -> str:
    """Empty the page cache of the SAE files before a cold run.

    Default: ``posix_fadvise(DONTNEED)`` on each file (touches only our files, so other
    jobs on the machine keep their cache); ``--drop-caches``: ``echo 3 > drop_caches``
    (root only; also drops dentries/inodes, machine-wide). Falls back to fadvise.
    """
    if use_drop_caches:
        subprocess.run(["sync"], check=False)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "drop_caches"
        except OSError:
            pass
    for folder in paths:
        for f in Path(folder).iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return "posix_fadvise(DONTNEED) per file"


def resident_fraction(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (mincore), to check that eviction worked."""
    import ctypes
    import ctypes.util
    import mmap

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    resident = total = 0
    for folder in paths:
        for f in Path(folder).iterdir():
            size = f.stat().st_size
            if size == 0:
                continue
            fd = os.open(f, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    return float("nan")
                n = (size + page - 1) // page
                vec = (ctypes.c_ubyte * n)()
                ok = libc.mincore(addr, size, vec) == 0
                libc.munmap(addr, size)
                if not ok:
                    return float("nan")
                resident += sum(b & 1 for b in vec)
                total += n
            finally:
                os.close(fd)
    return resident / max(total, 1)


def attach_ratios(rep: Report, t: dict[str, list[float]], cache: str, use_sl: bool) -> None:
    ours, floor, theirs = (
        "scope_hub ScopedModel.from_pretrained(18 folders)",
        "floor: safetensors safe_open x18",
        "saelens SAE.load_from_disk x18",
    )
    rep.ratio(f"ours / floor (attach, {cache})", t, ours, floor)
    if use_sl:
        rep.ratio(f"SAELens / ours (attach, {cache})", t, theirs, ours)
        rep.ratio(f"SAELens / floor (attach, {cache})", t, theirs, floor)


def attach_group(rep: Report, model, repeats: int, use_sl: bool, workdir: Path | None, use_drop_caches: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="scope_hub_bench_", dir=workdir))
    try:
        t0 = time.perf_counter()
        ours, theirs = write_18(root, use_sl)
        size = sum(f.stat().st_size for f in (ours[0]).iterdir()) / 1e6
        print(f"\nwrote 18 SAEs ({size:.0f} MB each) in both formats in {time.perf_counter() - t0:.1f} s under {root}")

        def attach_ours():
            return ScopedModel.from_pretrained(
                model, dictionaries={f"layer_{i}": p for i, p in enumerate(ours)}, lazy=True
            )

        def attach_ours_and_read():
            sm = attach_ours()
            for d in sm.dictionaries.values():
                _ = d.w_enc  # first touch loads every tensor (and checks it is finite)
            return sm

        def open_headers():  # the floor of any lazy load: open each file and read its header
            from safetensors import safe_open

            handles = [safe_open(str(p / "params.safetensors"), framework="pt") for p in ours]
            return [h.keys() for h in handles]

        fns = {
            "scope_hub ScopedModel.from_pretrained(18 folders)": attach_ours,
            "floor: safetensors safe_open x18": open_headers,
        }
        if use_sl:
            from sae_lens import SAE as SLSAE

            fns["saelens SAE.load_from_disk x18"] = lambda: [SLSAE.load_from_disk(p) for p in theirs]

        def sl_and_read():
            saes = [SLSAE.load_from_disk(p) for p in theirs]
            for s in saes:
                for t in s.state_dict().values():
                    t.sum()  # touch every page
            return saes

        read_fns = {"scope_hub attach + first touch of every SAE": attach_ours_and_read}
        if use_sl:
            read_fns["saelens load_from_disk x18 + read every tensor"] = sl_and_read

        all_paths = ours + theirs
        t = bench(fns, repeats * 2, warmup=2)
        rep.group(
            "lazy attach, warm page cache (18 SAEs)",
            t,
            tokens=None,
            base="scope_hub ScopedModel.from_pretrained(18 folders)",
        )
        attach_ratios(rep, t, "warm", use_sl)
        warm_frac = resident_fraction(all_paths)
        how = evict(all_paths, use_drop_caches)
        print(
            f"(cold: page cache emptied with {how} before every call; resident pages "
            f"{warm_frac:.0%} -> {resident_fraction(all_paths):.0%})"
        )
        cold = lambda: evict(all_paths, use_drop_caches)  # noqa: E731
        t = bench(fns, repeats, warmup=1, before_each=cold)
        rep.group(
            f"lazy attach, cold page cache ({how})",
            t,
            tokens=None,
            base="scope_hub ScopedModel.from_pretrained(18 folders)",
        )
        attach_ratios(rep, t, "cold", use_sl)
        t = bench(read_fns, max(3, repeats // 2), warmup=0, before_each=cold)
        rep.group(
            "cold load + read every byte (for scale)",
            t,
            tokens=None,
            base="scope_hub attach + first touch of every SAE",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


PARTS = ("full", "keep1", "features", "overhead", "attach")
"""What ``--only`` can pick."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 5")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
    )
    ap.add_argument("--no-saelens", action="store_true", help="skip the SAELens rows")
    ap.add_argument("--workdir", type=Path, default=None, help="where the 18 x 2 SAE folders are written (~3 GB)")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="cold runs use echo 3 > /proc/sys/vm/drop_caches (root; machine-wide) instead of fadvise",
    )
    add_device_argument(ap)
    add_summary_argument(ap)
    ap.add_argument("--json", type=Path, default=None, help="also write every timing here")
    return ap


def main(argv: list[str] | None = None) -> None:
    global DEVICE
    args = build_parser().parse_args(argv)
    DEVICE = resolve_device(args.device)
    repeats = args.repeats or (3 if args.quick else 5)
    only = set(args.only)
    use_sl = not args.no_saelens and try_saelens()
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for pkg in ("transformers", "sae_lens", "transformer_lens"):
        with contextlib.suppress(Exception):
            versions[pkg] = __import__(pkg).__version__
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}; {versions}; repeats {repeats}"
    )
    model, tok = load_causal_lm(gemma3_270m_path())
    model.requires_grad_(False).to(DEVICE)
    rep = Report()
    if only & {"full", "keep1", "features"}:
        forward_groups(rep, model, tok, repeats, use_sl, only)
    if "overhead" in only:
        overhead_group(rep, model, tok, repeats)
    if "attach" in only:
        attach_group(rep, model, repeats, use_sl, args.workdir, args.drop_caches)
    write_summary(args.summary, headlines(rep))
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "repeats": repeats, "rows": rep.rows}, indent=1))


if __name__ == "__main__":
    main()
