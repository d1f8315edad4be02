"""``attribute()`` against circuit-tracer 0.5's ``attribute``: same prompt, model and transcoders; time and peak memory.

The attribution part of ``benchmarks/circuits_vs_circuit_tracer.py`` (``--only attribution``).
:func:`prepare` (scope-hub's venv) writes one work folder: the model (a transformers folder both
transformers 5 and circuit-tracer's transformers 4 read), random JumpReLU transcoders with
thresholds set for a target L0 on the model's own ``mlp_in`` activations, saved in both
formats (scope-hub folders, and circuit-tracer's ``layer_{i}.safetensors`` through
``scope_hub.interop.circuit_tracer``), and the token ids of each prompt length. Then, per length,
each side runs in its own fresh process (:func:`ours_child` here; :data:`CT_CHILD` in
circuit-tracer's venv, no scope-hub import): load the model and transcoders, build the graph with
the same feature-row budget, batch size and logit targets, and report the wall time of the graph
build (clocks read after ``torch.cuda.synchronize`` on a GPU) and the process's peak memory
(``ru_maxrss`` of that fresh process on CPU, ``torch.cuda.max_memory_allocated`` on a GPU),
before and after the build. :func:`compare_graphs` then checks that both built the same graph
(the same active features and activations, the same selected feature rows, the same logit
targets, and every edge weight equal within tolerance); a length whose graphs differ yields
no ratio.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

EDGE_RTOL = 1e-4
"""Edges agree when ``|ours - theirs| <= EDGE_RTOL * max |theirs|`` over the graph (float32 sums in other orders)."""

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type with an oil-based ink and a screw press adapted from wine making. Within fifty years, "
    "presses were operating in more than two hundred cities across Europe, and the cost of books fell "
    "dramatically. Printers competed for readers with almanacs, grammars, sermons and news, and the "
    "standardised page changed how scholars cited, corrected and argued with one another."
)


# --- preparation (scope-hub venv) -----------------------------------------------------------------


def _model_and_tokenizer(name: str) -> tuple[Any, Any]:
    sys.path.insert(0, str(ROOT))
    if name == "tiny":
        from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer

        model = tiny_model("gemma3")
        model.config.max_position_embeddings = 512  # RoPE positions are computed, not tabulated
        return model, tiny_tokenizer()
    from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm

    return load_causal_lm(gemma3_270m_path(progress=False))


def _transcoders(model: Any, ids: Any, d_sae: int, l0: int) -> dict[str, Any]:
    """Random JumpReLU transcoders, one per layer, each threshold set so ~``l0`` latents fire per token."""
    import torch

    from scope_hub.testing.dictionaries import make_config, make_dictionary

    inputs: dict[int, torch.Tensor] = {}
    layers = model.model.layers
    handles = [
        layer.pre_feedforward_layernorm.register_forward_hook(
            lambda _m, _a, out, i=i: inputs.__setitem__(i, out[0].detach())
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    d = model.config.hidden_size
    out = {}
    for i in range(len(layers)):
        config = make_config(
            "transcoder", "jumprelu", d_in=d, d_out=d, d_sae=d_sae, site="mlp_in", site_out="mlp_out", layer=i
        )
        tc = make_dictionary(config, seed=100 + i)
        with torch.no_grad():
            x = inputs[i][1:]  # BOS excluded: its activations are unlike the rest
            tc.w_enc.mul_(1.0 / (x.norm(dim=-1).mean() * tc.w_enc.norm(dim=0, keepdim=True)))
            tc.b_enc.zero_()
            pre = x @ tc.w_enc
            # Per-latent quantile: each latent fires on a fraction l0 / d_sae of the prompt's tokens.
            tc.threshold.copy_(torch.quantile(pre, 1 - l0 / d_sae, dim=0).clamp_min(1e-3))
            tc.w_dec.mul_(0.05 * inputs[i].norm(dim=-1).mean() / tc.w_dec.norm(dim=-1, keepdim=True))
        out[f"layer_{i}"] = tc.eval()
    return out


def prepare(work: Path, model_name: str, lengths: list[int], d_sae: int, l0: int) -> dict[str, Any]:
    """Write the shared inputs of both sides into ``work``; returns what was written (for the report)."""
    import torch

    from scope_hub.interop import circuit_tracer

    model, tok = _model_and_tokenizer(model_name)
    ids = tok(PROMPT * 4, return_tensors="pt").input_ids[0]
    if ids.numel() < max(lengths):
        raise SystemExit(f"the prompt has {ids.numel()} tokens; the longest length asked for is {max(lengths)}")
    tcs = _transcoders(model, ids[: max(lengths)], d_sae, l0)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    config_path = work / "model" / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    # transformers 4 (circuit-tracer's) reads the RoPE bases from these keys, transformers 5 from rope_parameters.
    config["rope_theta"] = rope.get("full_attention", {}).get("rope_theta", config.get("rope_theta", 1e6))
    config["rope_local_base_freq"] = rope.get("sliding_attention", {}).get("rope_theta", 1e4)
    config["torch_dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=1))
    tok_config = work / "model" / "tokenizer_config.json"
    if model_name == "tiny":  # transformers 4.x lacks 5.x's tokenizer class name
        tok_config.write_text(
            json.dumps({**json.loads(tok_config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"})
        )
    for name, tc in tcs.items():
        tc.save_pretrained(work / "ours" / name)
    circuit_tracer.save_all(tcs, work / "ct")
    with torch.no_grad():
        logits = model(input_ids=ids[None, : max(lengths)], use_cache=False).logits[0]
    scale = getattr(model.get_input_embeddings(), "embed_scale", 1.0)
    torch.save({"ids": ids[: max(lengths)], "logits": logits, "embed_scale": float(scale)}, work / "prompt.pt")
    return {"model": model_name, "n_layers": len(tcs), "d_model": model.config.hidden_size, "d_sae": d_sae, "l0": l0}


# --- our side (fresh process, scope-hub venv) -------------------------------------------------------


def _peak_mib(device: Any) -> float:
    sys.path.insert(0, str(ROOT))
    from benchmarks.device import peak_mib

    return peak_mib(device)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ours_child(work: Path, length: int, rows: int, batch: int, device_name: str, threads: int) -> dict[str, Any]:
    """Build our graph of the first ``length`` tokens; save it; return time and memory."""
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)

    sys.path.insert(0, str(ROOT))
    from benchmarks.device import reset_peak, resolve_device, synchronize
    from scope_hub.analysis.circuits.attribution import attribute
    from scope_hub.gguf_models import load_causal_lm

    device = resolve_device(device_name)
    model, tok = load_causal_lm(work / "model")
    model.to(device)
    folders = sorted((work / "ours").iterdir(), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    ids = torch.load(work / "prompt.pt", weights_only=True)["ids"][:length]
    # Loading the dictionaries is part of the setup on both sides, not of the timed build.
    from scope_hub.scoped_model import ScopedModel

    scoped = ScopedModel.from_pretrained(model, dictionaries={p.name: str(p) for p in folders})
    for d in scoped.dictionaries.values():
        _ = d.w_enc  # first touch: weights in memory before the clock starts
    loaded = _peak_mib(device)
    reset_peak(device)
    synchronize(device)
    started, cpu = time.perf_counter(), _cpu_s()
    graph = attribute(ids.to(device), scoped, tokenizer=tok, max_feature_nodes=rows or None, batch_size=batch)
    synchronize(device)
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    peak = _peak_mib(device)
    torch.save(
        {
            "features": graph.features,
            "activations": graph.activations.float(),
            "row_nodes": graph.row_nodes,
            "rows": graph.rows.float(),
            "logit_ids": graph.logit_ids,
            "n_layers": graph.n_layers,
        },
        work / f"ours_{length}.pt",
    )
    return {"wall_s": wall, "cpu_s": cpu, "peak_mib": peak, "loaded_mib": loaded, "n_features": graph.n_features}


# --- circuit-tracer's side (fresh process, its own venv, no scope-hub import) ----------------------

CT_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from circuit_tracer import ReplacementModel, attribute
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

work, length, rows, batch, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if int(sys.argv[6]):
    torch.set_num_threads(int(sys.argv[6]))
dev = torch.device(device)

def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

cuda = dev.type == "cuda"

def sync():
    if cuda:
        torch.cuda.synchronize(dev)

def peak():
    sync()
    return torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

paths = {int(p.stem.split("_")[1]): str(p) for p in (work / "ct").glob("layer_*.safetensors")}
ts = load_transcoder_set(paths, scan="bench", feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out",
                         device=dev, dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
model = ReplacementModel.from_pretrained_and_transcoders(str(work / "model"), ts, backend="nnsight", device=dev,
                                                         dtype=torch.float32)
prompt = torch.load(work / "prompt.pt", weights_only=True)
ids = prompt["ids"][:length]
with torch.no_grad():  # the same model as ours: its logits match the ones scope-hub's side recorded
    logits = model._model(input_ids=ids[None].to(dev)).logits[0].float().cpu()
model_diff = float((logits - prompt["logits"][:length]).abs().max())
loaded = peak()
if cuda:
    torch.cuda.reset_peak_memory_stats(dev)
sync()
started, cpu = time.perf_counter(), cpu_s()
graph = attribute(ids.to(dev), model, max_feature_nodes=rows or None, batch_size=batch)
sync()
wall, cpu = time.perf_counter() - started, cpu_s() - cpu
top = peak()
torch.save({"active_features": graph.active_features.cpu(), "activations": graph.activation_values.float().cpu(),
            "selected": graph.selected_features.cpu(), "adjacency": graph.adjacency_matrix.float().cpu(),
            "logit_ids": torch.tensor([t.vocab_idx for t in graph.logit_targets])}, work / f"ct_{length}.pt")
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mib": top, "loaded_mib": loaded, "model_max_abs_logit_diff": model_diff,
                  "n_features": int(graph.active_features.shape[0])}))
"""


def run_side(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} ... failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the check ---------------------------------------------------------------------------------


def _aligned(work: Path, length: int) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """(ours, theirs, our rows in circuit-tracer's layout, theirs with token edges in embedding-output units)."""
    import torch

    ours = torch.load(work / f"ours_{length}.pt", weights_only=True)
    theirs = torch.load(work / f"ct_{length}.pt", weights_only=True)
    n_feat, n_logits = len(ours["features"]), len(ours["logit_ids"])
    is_feature = ours["row_nodes"] < n_feat
    selected = ours["row_nodes"][is_feature]
    # Our rows span every active feature; circuit-tracer keeps the selected features' columns only.
    columns = torch.cat([selected, torch.arange(n_feat, ours["rows"].shape[1])])
    mine = torch.zeros_like(theirs["adjacency"])
    mine[: len(selected)] = ours["rows"][is_feature][:, columns]
    mine[-n_logits:] = ours["rows"][~is_feature][:, columns]
    # circuit-tracer's nnsight backend takes a token node's vector as the raw embedding row
    # (embed_weight[token]) while the gradient is read after the embedding module, which in Gemma
    # multiplies by sqrt(d_model): its token edges are ours / embed_scale. Ours use the module's
    # output, the vector that actually enters the residual stream (completeness holds with it).
    reference = theirs["adjacency"].clone()
    start = len(selected) + ours["n_layers"] * length
    reference[:, start : start + length] *= torch.load(work / "prompt.pt", weights_only=True)["embed_scale"]
    return ours, theirs, mine, reference


def compare_graphs(work: Path, length: int) -> list[str]:
    """Everything that differs between the two graphs of ``length`` tokens (empty: the same graph)."""
    import torch

    ours, theirs, mine, reference = _aligned(work, length)
    problems = []
    if not torch.equal(ours["features"], theirs["active_features"].long()):
        return [f"active features differ ({len(ours['features'])} vs {len(theirs['active_features'])})"]
    act_diff = float((ours["activations"] - theirs["activations"]).abs().max())
    if act_diff > EDGE_RTOL * float(theirs["activations"].abs().max()):
        problems.append(f"activations differ by up to {act_diff:.3g}")
    if not torch.equal(ours["logit_ids"], theirs["logit_ids"].long()):
        return [*problems, f"logit targets differ: {ours['logit_ids'].tolist()} vs {theirs['logit_ids'].tolist()}"]
    selected = ours["row_nodes"][ours["row_nodes"] < len(ours["features"])]
    if not torch.equal(selected, theirs["selected"].long()):
        only_ours = set(selected.tolist()) - set(theirs["selected"].tolist())
        return [*problems, f"selected feature rows differ ({len(only_ours)} of {len(selected)} only in ours)"]
    scale = float(reference.abs().max())
    diff = (mine - reference).abs()
    if float(diff.max()) > EDGE_RTOL * scale:
        row, col = divmod(int(diff.argmax()), diff.shape[1])
        problems.append(
            f"edge weights differ by up to {float(diff.max()):.3g} (max |edge| {scale:.3g}) at row {row}, column "
            f"{col}; {int((diff > EDGE_RTOL * scale).sum())} of {diff.numel()} edges outside tolerance"
        )
    return problems


def max_edge_error(work: Path, length: int) -> float:
    """Largest |ours - theirs| edge difference relative to the largest edge (after :func:`compare_graphs`)."""
    _, _, mine, reference = _aligned(work, length)
    return float((mine - reference).abs().max() / reference.abs().max())
