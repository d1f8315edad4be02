"""The local replacement model: one real forward recorded, then replayed linearly.

**Record** (:func:`record`, batch 1, no grad): the real model runs once with
attention patterns and norm scales recorded (:mod:`.freeze`). At every MLP
block we keep its input (for the encoders) and its true output, and split the
output the way the attribution graph sees it::

    mlp_out = skip(mlp_in) + sources + base
    sources = sum of active features' decoder writes + error   (at source positions)
    base    = b_dec + everything at constant positions (e.g. BOS)

so the splice reproduces the real model exactly (the error term), while the
features themselves are constants.

**Replay** (:func:`replay`, batch ``B`` copies): the model runs again with the
frozen patterns and scales, every MLP skipped and its block output replaced by
``skip(mlp_in) + (sources + base)`` (mode ``"attribution"``) or by
``skip(mlp_in) + base`` (mode ``"bias"``: every source zeroed, which yields
each node's bias term). The token embeddings become leaves. From the token
embeddings and block outputs up to every block input and the final-norm output
the map is then linear, so one backward pass gives a whole row of edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scope_hub.analysis.circuits.freeze import FrozenState, frozen, parameters_frozen, skipped
from scope_hub.analysis.circuits.transcoder_set import TranscoderSet
from scope_hub.errors import UnsupportedModelError
from scope_hub.hookpoints import Hookpoint
from scope_hub.hooks import capture, hook, replace, stop_after


@dataclass
class ActiveFeatures:
    """Active features at source positions, sorted by (layer, position, index)."""

    layer: torch.Tensor
    """Model layer of each feature ``[F]``."""
    pos: torch.Tensor
    """Token position ``[F]``."""
    index: torch.Tensor
    """Latent index within its dictionary layer ``[F]``."""
    activation: torch.Tensor
    """Activation value ``[F]``."""
    pre: torch.Tensor
    """Pre-activation ``[F]`` (what a feature node's incoming edges + bias add up to)."""
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Model layer -> (start, stop) slice of its features."""

    def __len__(self) -> int:
        return int(self.layer.numel())


@dataclass
class Recording:
    """Everything the real forward told us, on CPU/the model's device, batch dim dropped."""

    input_ids: torch.Tensor
    state: FrozenState
    source_mask: torch.Tensor
    """``[T]`` bool: positions whose features/errors are graph nodes (others fold into biases)."""
    embed: torch.Tensor
    """Token embedding output ``[T, d]`` (token node vectors)."""
    final: torch.Tensor
    """Final-norm output ``[T, d]``."""
    logits: torch.Tensor
    """The model's real logits at the last position ``[V]`` (softcap applied)."""
    block_in: dict[int, torch.Tensor]
    """Dictionary layer -> its input ``[T, d_in]``."""
    skip: dict[int, torch.Tensor]
    """Model layer -> skip-path output at record time ``[T, d]`` (zeros without a skip)."""
    sources: dict[int, torch.Tensor]
    """Model layer -> features' decoder writes + error at source positions ``[T, d]``."""
    base: dict[int, torch.Tensor]
    """Model layer -> the constant rest of the block output ``[T, d]``."""
    errors: dict[int, torch.Tensor]
    """Model layer -> error node vectors ``[T, d]`` (zero at constant positions)."""
    features: ActiveFeatures

    @property
    def n_pos(self) -> int:
        return int(self.input_ids.numel())


def _embed_hookpoint(model: nn.Module) -> str:
    hf_model: Any = model  # a transformers PreTrainedModel; nn.Module's typing does not know its methods
    embeddings = hf_model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embeddings:
            return f"{name}.output"
    raise UnsupportedModelError(f"{type(model).__name__}: its input embeddings are not a submodule")


def final_hookpoint(ts: TranscoderSet) -> str:
    """The final norm's output: where logit gradients are injected (and replay stops)."""
    return f"{ts.adapter.final_norm_path}.output"


def real_logits(model: nn.Module, final: torch.Tensor) -> torch.Tensor:
    """The model's logits from final-norm outputs (softcap applied, as its forward does)."""
    hf_model: Any = model
    logits = hf_model.get_output_embeddings()(final)
    cap = getattr(
        hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config,
        "final_logit_softcapping",
        None,
    )
    return torch.tanh(logits / cap) * cap if cap else logits


# --- record -------------------------------------------------------------------------------------


@torch.no_grad()
def record(model: nn.Module, ts: TranscoderSet, input_ids: torch.Tensor, source_mask: torch.Tensor) -> Recording:
    """Run the real model once on ``input_ids`` ``[T]`` and decompose every MLP block output."""
    device = next(model.parameters()).device  # callers may hand CPU ids and masks to a model on a GPU
    ids = input_ids.reshape(1, -1).to(device)
    source_mask = source_mask.to(device)
    ins = [b.hook_in for b in ts.blocks]
    outs = [ts.mlp_out(L) for L in range(ts.n_layers)]
    fin, emb = final_hookpoint(ts), _embed_hookpoint(model)
    state = FrozenState()
    with frozen(model, state, "record"), capture(model, ins + outs + [fin, emb]) as acts, stop_after(model, fin):
        model(input_ids=ids, use_cache=False)
    if len(state.patterns) != ts.n_layers:
        raise UnsupportedModelError(
            f"{type(model).__name__}: {len(state.patterns)} of {ts.n_layers} attention layers went through "
            "transformers' AttentionInterface; the others cannot be frozen"
        )
    final = acts[fin][0]
    block_in = {b.layer: acts[b.hook_in][0] for b in ts.blocks}
    feats, constant = _active_features(ts, block_in, source_mask)
    rec = Recording(
        ids[0], state, source_mask, acts[emb][0], final, real_logits(model, final[-1]), block_in, {}, {}, {}, {}, feats
    )
    for L in range(ts.n_layers):
        _split_block_output(rec, ts, L, acts[ts.mlp_out(L)][0], constant)
    return rec


Sparse = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (positions, indices, activations)


def _active_features(
    ts: TranscoderSet, block_in: dict[int, torch.Tensor], source_mask: torch.Tensor
) -> tuple[ActiveFeatures, dict[int, Sparse]]:
    """Active features at source positions (the nodes), and those at constant positions (folded into biases)."""
    parts, constant, offsets, start = [], {}, {}, 0
    for block in ts.blocks:
        f, pre = ts.encode(block, block_in[block.layer])  # dense [T, d_sae], one layer at a time
        pos, idx = f.nonzero(as_tuple=True)  # row-major: sorted by (pos, idx)
        act, pre = f[pos, idx], pre[pos, idx]
        node = source_mask[pos]
        parts.append((torch.full_like(pos[node], block.layer), pos[node], idx[node], act[node], pre[node]))
        constant[block.layer] = (pos[~node], idx[~node], act[~node])
        offsets[block.layer] = (start, start + int(node.sum()))
        start = offsets[block.layer][1]
    layer, pos, index, activation, pre = (torch.cat(column) for column in zip(*parts))
    return ActiveFeatures(layer, pos, index, activation, pre, offsets=offsets), constant


def _split_block_output(
    rec: Recording, ts: TranscoderSet, layer: int, total: torch.Tensor, constant: dict[int, Sparse]
) -> None:
    mask = rec.source_mask[:, None].to(total.dtype)
    block = ts.block_at(layer)
    skip, decoded, from_sources = torch.zeros_like(total), torch.zeros_like(total), torch.zeros_like(total)
    if block is not None:  # (without a dictionary the whole MLP output is this layer's error node)
        skip_out = ts.skip(block, rec.block_in[layer])
        skip = torch.zeros_like(total) if skip_out is None else skip_out.to(total.dtype)
        f, n_pos = rec.features, rec.n_pos
        for source in ts.writers_of(block):
            a, b = f.offsets[source.layer]
            from_sources += ts.decode_sparse(source, block, f.pos[a:b], f.index[a:b], f.activation[a:b], n_pos)
            decoded += ts.decode_sparse(source, block, *constant[source.layer], n_pos)
        decoded += from_sources + ts.b_dec(block)
    error = (total - skip - decoded) * mask
    rec.skip[layer] = skip
    rec.errors[layer] = error
    rec.sources[layer] = from_sources + error
    rec.base[layer] = total - skip - rec.sources[layer]


# --- replay -------------------------------------------------------------------------------------


@dataclass
class Replay:
    """Tensors of a replay pass, each ``[B, T, d]`` and part of one autograd graph."""

    embed: torch.Tensor
    """Token embeddings (a leaf)."""
    block_out: dict[int, torch.Tensor] = field(default_factory=dict)
    """Model layer -> the MLP block output written by the replacement."""
    block_in: dict[int, torch.Tensor] = field(default_factory=dict)
    """Dictionary layer -> the block input (encoder read)."""
    final: torch.Tensor | None = None
    """Final-norm output."""

    def final_output(self) -> torch.Tensor:
        """The final-norm output, which every replay forward reaches (its hook stops the model there)."""
        if self.final is None:
            raise UnsupportedModelError("the replay forward never reached the final norm; the model skipped it")
        return self.final


@contextlib.contextmanager
def replay(
    model: nn.Module, ts: TranscoderSet, rec: Recording, batch: int, mode: str = "attribution"
) -> Iterator[Replay]:
    """Run the frozen linear replacement on ``batch`` copies of the prompt; yield its tensors.

    ``mode="attribution"``: every source holds its recorded value (grad-enabled);
    ``mode="bias"``: every source is zero, so each read equals that node's bias.
    """
    if mode not in ("attribution", "bias"):
        raise ValueError(f"mode must be 'attribution' or 'bias', got {mode!r}")
    live = mode == "attribution"
    ids = rec.input_ids.reshape(1, -1).expand(batch, -1)
    embed = rec.embed if live else torch.zeros_like(rec.embed)
    out = Replay(embed=embed.expand(batch, -1, -1).clone().requires_grad_(live))
    fin = final_hookpoint(ts)
    with contextlib.ExitStack() as stack, torch.set_grad_enabled(live):
        stack.enter_context(parameters_frozen(model))
        for dictionary in ts.dictionaries:  # the skip path is in the graph: no weight grads wanted
            stack.enter_context(parameters_frozen(dictionary))
        stack.enter_context(frozen(model, rec.state, "replay"))
        stack.enter_context(skipped(model, [ts.mlp_module(L) for L in range(ts.n_layers)]))
        stack.enter_context(replace(model, _embed_hookpoint(model), lambda _: out.embed))
        for block in ts.blocks:
            stack.enter_context(hook(model, block.hook_in, _stash(out.block_in, block.layer)))
        for layer in range(ts.n_layers):
            const = rec.sources[layer] + rec.base[layer] if live else rec.base[layer]
            writer = _block_writer(ts, rec, out, layer, const, batch, live)
            stack.enter_context(replace(model, ts.mlp_out(layer), writer))
        acts = stack.enter_context(capture(model, [fin], detach=False))
        with stop_after(model, Hookpoint.parse(fin)):
            model(input_ids=ids, use_cache=False)
        out.final = acts[fin]
        yield out


def _stash(store: dict[int, torch.Tensor], layer: int):
    def fn(x: torch.Tensor) -> None:
        store[layer] = x

    return fn


def _block_writer(
    ts: TranscoderSet, rec: Recording, out: Replay, layer: int, const: torch.Tensor, batch: int, live: bool
):
    block = ts.block_at(layer)

    def write(act: torch.Tensor) -> torch.Tensor:
        skip = ts.skip(block, out.block_in[layer]) if block is not None else None
        if skip is None:
            value = const.to(act.dtype).expand(batch, -1, -1).clone().requires_grad_(live)
        else:  # the skip path is linear in mlp_in, so it stays in the graph
            value = skip.to(act.dtype) + const.to(act.dtype)
        out.block_out[layer] = value
        return value

    return write
