"""Delta LM loss: splice a dictionary into the model with :func:`scope_hub.hooks.replace`.

* SAE: the activation at its hookpoint becomes the reconstruction;
* transcoder / skip transcoder: the output hookpoint (mlp_out) becomes the
  prediction from the input hookpoint (mlp_in) captured earlier in the same layer;
* CLT: every layer's mlp_out becomes ``sum_{i<=j} f_i @ w_dec_i[:, j-i] + b_dec_j``
  with ``f_i`` encoded from the (already spliced) mlp_in of layer i.

With ``error_term=True`` the exact error (original minus output) is added back,
so the loss must equal the clean loss: a check that the splice is wired right.
Positions excluded from training (BOS, padding) keep their original activations.

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> model = tiny_gemma3()
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=64, d_sae=32, layer=1, site="resid_post"))
    >>> _ = [torch.nn.init.normal_(p, std=0.1) for p in sae.parameters()]
    >>> ids = torch.randint(0, 256, (2, 16))
    >>> delta, with_error = delta_lm_loss(model, sae, ids, torch.ones_like(ids), bos_id=None)
    >>> abs(delta) > 1e-3, abs(with_error) < 1e-4   # a random SAE changes the loss; the error term undoes it
    (True, True)
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.hookpoints import adapter_for
from scope_hub.hooks import hook, replace
from scope_hub.kinds import kind


def _lm_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss


def _sites(dictionary: Dictionary, adapter: Any) -> tuple[list, list]:
    c = dictionary.config
    layers = c.layers if kind(c.type).per_layer_decoders else [c.layer]
    if c.site is None or any(layer is None for layer in layers):
        raise ValueError("the dictionary's config lacks site/layer(s); cannot splice it")
    inputs = [adapter.hookpoint(c.site, layer) for layer in layers]
    outputs = (
        inputs
        if kind(c.type).reconstructs_input
        else [adapter.hookpoint(c.site_out or "mlp_out", layer) for layer in layers]
    )
    return inputs, outputs


def _splices(model: Any, dictionary: Dictionary, keep: torch.Tensor, error_term: bool) -> ExitStack:
    """Context stack that replaces the dictionary's output site(s) for the current forward."""
    inputs, outputs = _sites(dictionary, adapter_for(model))
    stack, seen = ExitStack(), {}

    def finish(original: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        new = new.to(original.dtype)
        if error_term:
            new = new + (original - new)
        return torch.where(keep.unsqueeze(-1), new, original)

    if kind(dictionary.config.type).reconstructs_input:
        stack.enter_context(replace(model, outputs[0], lambda a: finish(a, dictionary(a))))
        return stack
    if kind(dictionary.config.type).layout == "single":
        stack.enter_context(hook(model, inputs[0], lambda a: seen.__setitem__("x", a)))
        stack.enter_context(replace(model, outputs[0], lambda a: finish(a, dictionary(seen["x"]))))
        return stack
    features: dict[int, torch.Tensor] = {}
    for i, (hp_in, hp_out) in enumerate(zip(inputs, outputs)):

        def read(a: torch.Tensor, i: int = i) -> None:  # returns None: the activation is kept
            features[i] = dictionary.encode_layer(i, a)
            seen[i] = a

        def write(a: torch.Tensor, j: int = i) -> torch.Tensor:
            y = dictionary.decode_layer(j, [features[i] for i in range(j + 1)]) + dictionary.skip_layer(j, seen[j])
            return finish(a, y)

        stack.enter_context(hook(model, hp_in, read))
        stack.enter_context(replace(model, hp_out, write))
    return stack


@torch.no_grad()
def delta_lm_loss(
    model: Any,
    dictionary: Dictionary,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    bos_id: int | None,
    exclude_bos: bool = True,
    batch_size: int = 8,
) -> tuple[float, float]:
    """``(spliced - clean, spliced_with_error_term - clean)`` mean next-token cross-entropy."""
    was_training = dictionary.training
    dictionary.eval()
    totals, tokens = torch.zeros(3, dtype=torch.float64), 0.0
    try:
        for lo in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[lo : lo + batch_size], attention_mask[lo : lo + batch_size]
            keep = mask.bool() & ((ids != bos_id) if (exclude_bos and bos_id is not None) else True)
            weight = float(mask[:, 1:].sum())
            tokens += weight
            totals[0] += weight * float(_lm_loss(model, ids, mask))
            for slot, error_term in ((1, False), (2, True)):
                with _splices(model, dictionary, keep, error_term):
                    totals[slot] += weight * float(_lm_loss(model, ids, mask))
    finally:
        dictionary.train(was_training)
    clean, spliced, with_error = (totals / max(tokens, 1.0)).tolist()
    return spliced - clean, with_error - clean
