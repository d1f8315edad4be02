"""Build an attribution graph: one real forward, one frozen replay, batched backward passes.

Algorithm (Ameisen et al., 2025; circuit-tracer's ``attribute``):

1. :func:`~.replacement.record` runs the real model once and finds the active
   features, error vectors, token embeddings and the model's next-token logits.
2. :func:`~.replacement.replay` runs the frozen linear replacement on ``B``
   copies of the prompt (one autograd graph, reused by every backward pass).
3. For a batch of ``B`` targets (logit nodes first, then features), one
   backward pass of ``sum_b <v_b, read_b>`` gives, in copy ``b``, the gradient
   of target ``b`` at every token embedding and every MLP block output; an edge
   is then ``source vector . gradient`` (``activation x decoder row`` for
   features, the error vector, the embedding).
4. When only ``max_feature_nodes`` feature rows are computed, features are
   visited in order of their current influence on the logits (re-ranked every
   ``update_interval`` batches), as circuit-tracer does.
5. A second replay with every source zeroed gives each row's bias, so
   completeness (``sum(edges) + bias == value``) is checked independently.

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> model = tiny_gemma3().double()
    >>> tcs = [make_dictionary(make_config("transcoder", "relu", d_in=64, d_out=64, d_sae=8, site="mlp_in",
    ...                                    site_out="mlp_out", layer=L), dtype=torch.float64) for L in range(3)]
    >>> graph = attribute(torch.tensor([257, 104, 105, 33]), model, tcs, max_n_logits=2)
    >>> bool(graph.completeness().abs().max() < 1e-8), graph.n_logits
    (True, 2)
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.replacement import Recording, record, replay
from scope_hub.analysis.circuits.rows import RowBuilder
from scope_hub.analysis.circuits.targets import LogitTargets, logit_targets
from scope_hub.analysis.circuits.transcoder_set import TranscoderSet
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError

DEFAULT_MAX_FEATURE_NODES = 2048
"""Feature rows computed by default: rows are dense over all sources (4 bytes x N each)."""


def attribute(
    prompt: str | torch.Tensor | Sequence[int],
    model: nn.Module,
    transcoders: Mapping[str, Any] | Iterable[Any] | None = None,
    *,
    tokenizer: Any = None,
    targets: Sequence[int | str] | torch.Tensor | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = DEFAULT_MAX_FEATURE_NODES,
    batch_size: int | None = None,
    memory_budget_gb: float = 2.0,
    update_interval: int = 4,
    zero_bos: bool = True,
    registry: Any = None,
    verbose: bool = False,
) -> Graph:
    """Compute the attribution graph of ``prompt``'s next-token prediction.

    ``model``: a transformers causal LM or a :class:`~scope_hub.scoped_model.ScopedModel`
    (whose attached transcoders are used when ``transcoders`` is None).
    ``transcoders``: Dictionary objects, folders or registry keys (a mapping gives
    names): per-layer (skip) transcoders or one CLT. ``targets``: token ids/strings
    for the logit nodes (default: salient tokens up to ``desired_logit_prob``).
    ``max_feature_nodes``: feature rows to compute (None: all active features).
    ``batch_size``: prompt copies per backward pass (default: from ``memory_budget_gb``).
    ``zero_bos``: treat everything at a leading BOS position as a constant (no
    feature or error nodes there), as circuit-tracer does.
    """
    clock = _Clock()
    ids = _token_ids(prompt, tokenizer)
    base, dictionaries, names = resolve_dictionaries(model, transcoders, registry)
    check_prompt_length(ids, base)
    ts = TranscoderSet(base, dictionaries)
    rec = record(base, ts, ids, _source_mask(ids, base, tokenizer, zero_bos))
    tg = logit_targets(
        base, rec.logits, tokenizer, targets, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob
    )
    clock.lap("record_s")
    n_feat = len(rec.features)
    budget = n_feat if max_feature_nodes is None else min(max_feature_nodes, n_feat)
    batch = max(1, min(batch_size or _auto_batch(rec, ts, memory_budget_gb), len(tg) + budget))
    builder = RowBuilder(ts, rec, tg)
    _log(verbose, f"{n_feat} active features, {len(tg)} logits; computing {budget} feature rows, batch {batch}")
    with replay(base, ts, rec, batch) as rp:
        clock.lap("replay_forward_s")
        rows, row_nodes = builder.explore(rp, batch, budget, update_interval, lambda m: _log(verbose, m))
    clock.lap("backward_s")
    values, bias = builder.values_and_bias(base, row_nodes)
    clock.lap("bias_s")
    info = {
        **clock.laps,
        "total_s": clock.total(),
        "batch_size": batch,
        "n_active_features": n_feat,
        "n_feature_rows": budget,
        "n_backward": builder.n_backward,
        "dtype": str(rec.embed.dtype).removeprefix("torch."),
        "rows_mib": rows.numel() * rows.element_size() / 2**20,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dictionary_layers": [b.layer for b in ts.blocks],
    }
    by_layer = list(dict.fromkeys(b.name for b in ts.blocks))  # names in layer order (blocks are sorted)
    return _assemble(
        base,
        rec,
        tg,
        ts,
        by_layer + [n for n in names if n not in by_layer],
        tokenizer,
        row_nodes,
        rows,
        values,
        bias,
        info,
    )


class _Clock:
    """Wall-clock laps for ``Graph.info``."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    def total(self) -> float:
        return time.perf_counter() - self.start


# --- inputs -------------------------------------------------------------------------------------


def resolve_dictionaries(
    model: nn.Module, transcoders: Any, registry: Any = None
) -> tuple[nn.Module, dict[str, Dictionary], list[str]]:
    """(bare transformers model, name -> dictionary, names) from what :func:`attribute` accepts.

    Folders and registry keys load through :class:`~scope_hub.scoped_model.ScopedModel`
    (which also casts dictionaries to the model's device and dtype).
    """
    from scope_hub.scoped_model import ScopedModel

    if isinstance(model, ScopedModel):
        attached = model.dictionaries
        chosen = list(attached) if transcoders is None else list(transcoders)
        if all(isinstance(name, str) and name in attached for name in chosen):
            return model.model, {n: attached[n] for n in chosen}, chosen
        model = model.model
    if transcoders is None:
        raise ConfigError("pass transcoders= (Dictionary objects, folders or registry keys), or a ScopedModel")
    scoped = ScopedModel.from_pretrained(model, dictionaries=transcoders, registry=registry)
    return model, scoped.dictionaries, list(scoped.dictionaries)


def _token_ids(prompt: str | torch.Tensor | Sequence[int], tokenizer: Any) -> torch.Tensor:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ConfigError("a text prompt needs tokenizer=; or pass token ids")
        return tokenizer(prompt, return_tensors="pt").input_ids[0]
    ids = torch.as_tensor(prompt).reshape(-1).long()
    if ids.numel() == 0:
        raise ConfigError("the prompt is empty")
    return ids


def max_positions(model: nn.Module) -> int | None:
    """The longest input ``model`` supports: its (text) config's ``max_position_embeddings``
    (GPT-2: ``n_positions``); None when the config names neither.

    Example:
        >>> from scope_hub.testing.tiny_models import tiny_gemma3
        >>> max_positions(tiny_gemma3()), max_positions(nn.Linear(2, 2))
        (128, None)
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in ("max_position_embeddings", "n_positions"):
        value = getattr(text, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_length(ids: torch.Tensor, model: nn.Module) -> None:
    """Raise :class:`ConfigError` if ``ids`` has more tokens than ``model`` supports.

    Example:
        >>> from scope_hub.testing.tiny_models import tiny_gemma3
        >>> check_prompt_length(torch.zeros(129, dtype=torch.long), tiny_gemma3())
        Traceback (most recent call last):
        ...
        scope_hub.errors.ConfigError: the prompt has 129 tokens but the model supports at most 128 (max_position_embeddings); shorten the prompt (e.g. keep its last 128 tokens)
    """
    limit = max_positions(model)
    if limit is not None and ids.numel() > limit:
        raise ConfigError(
            f"the prompt has {ids.numel()} tokens but the model supports at most {limit} "
            f"(max_position_embeddings); shorten the prompt (e.g. keep its last {limit} tokens)"
        )


def _source_mask(ids: torch.Tensor, model: nn.Module, tokenizer: Any, zero_bos: bool) -> torch.Tensor:
    mask = torch.ones(ids.numel(), dtype=torch.bool, device=ids.device)
    bos = (
        getattr(tokenizer, "bos_token_id", None)
        if tokenizer is not None
        else getattr(model.config, "bos_token_id", None)
    )
    if zero_bos and bos is not None and int(ids[0]) == int(bos):
        mask[0] = False  # BOS sees only itself: its MLP outputs are the same for every prompt
    return mask


def _auto_batch(rec: Recording, ts: TranscoderSet, budget_gb: float) -> int:
    # Alive per copy during a backward: block in/out + grads + temporaries (~4 x (2 L + 2) activations).
    d = rec.embed.shape[-1]
    per_copy = 4 * (2 * ts.n_layers + 2) * rec.n_pos * d * rec.embed.element_size()
    return int(max(1, min(256, budget_gb * 2**30 // per_copy)))


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(f"[attribute] {message}", file=sys.stderr, flush=True)


def _assemble(
    model: nn.Module,
    rec: Recording,
    tg: LogitTargets,
    ts: TranscoderSet,
    names: list[str],
    tokenizer: Any,
    row_nodes: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    info: dict[str, Any],
) -> Graph:
    ids = rec.input_ids.cpu()
    tokens = [tokenizer.decode([int(t)]) for t in ids] if tokenizer is not None else [f"<{int(t)}>" for t in ids]
    prompt = tokenizer.decode(ids.tolist()) if tokenizer is not None else " ".join(tokens)
    f = rec.features
    return Graph(
        prompt=prompt,
        input_ids=ids,
        tokens=tokens,
        n_layers=ts.n_layers,
        features=torch.stack([f.layer, f.pos, f.index], dim=1).cpu(),
        activations=f.activation.detach().cpu(),
        logit_ids=tg.token_ids.cpu(),
        logit_probs=tg.probabilities.cpu(),
        logit_labels=list(tg.labels),
        row_nodes=row_nodes.cpu(),
        rows=rows.detach().cpu(),
        values=values.cpu(),
        bias=bias.cpu(),
        dictionaries=names,
        model_name=getattr(model.config, "_name_or_path", None) or None,
        info=info,
    )
