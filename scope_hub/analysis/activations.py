"""Feature activations of an attached dictionary over prompts or plain text, in batches.

* :func:`prompt_features`: one vector per chat prompt — the features at one position
  (``answer``, ``last_user``) or reduced (mean/max) over positions of some roles;
* :func:`text_windows` + :func:`window_features`: a plain-text corpus cut into fixed-length
  token windows and the features at every token (dashboards, model comparisons).

Forwards stop after the dictionary's last hooked layer (no unembedding), which is most of
the cost on large-vocabulary models.

Example:
    >>> import torch
    >>> from scope_hub.scoped_model import ScopedModel
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=0))
    >>> sm = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": sae})
    >>> tok = chat_tokenizer()
    >>> prompt_features(sm, "sae", tok, ["Hi?", "Tell me a story."]).shape
    torch.Size([2, 16])
    >>> prompt_features(sm, "sae", tok, ["Hi?"], selector="user", reduce="max").shape
    torch.Size([1, 16])
    >>> ids, mask = text_windows(tok, ["one two three four five"], window=8)
    >>> ids.shape, window_features(sm, "sae", ids, mask).shape
    (torch.Size([4, 8]), torch.Size([4, 8, 16]))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from scope_hub.analysis.chat import ROLES, Conversation
from scope_hub.analysis.direction import batches
from scope_hub.errors import ConfigError
from scope_hub.scoped_model import ScopedModel

__all__ = ["dense", "iter_window_features", "prompt_features", "text_windows", "window_features"]

_POSITIONS = ("answer", "first_model", "last_user", "last")


def dense(features: Any) -> torch.Tensor:
    """Dense features from a run_with_cache entry (dense tensor or SparseFeatures)."""
    return features.to_dense() if hasattr(features, "to_dense") else features


@torch.no_grad()
def prompt_features(
    scoped: ScopedModel,
    name: str,
    tokenizer: Any,
    prompts: Sequence[Conversation],
    *,
    selector: str | Sequence[str] = "answer",
    reduce: str = "mean",
    batch_size: int = 16,
) -> torch.Tensor:
    """[len(prompts), d_sae] features per prompt.

    ``selector``: a position (``answer``, ``first_model``, ``last_user``, ``last``) or one or
    more roles (``user``, ``template``, ``system``, ``model``) whose positions are reduced by
    ``reduce`` (``mean`` or ``max``).
    """
    roles = [selector] if isinstance(selector, str) else list(selector)
    if not (len(roles) == 1 and roles[0] in _POSITIONS) and not set(roles) <= set(ROLES[1:]):
        raise ConfigError(f"selector {selector!r}: use one of {_POSITIONS} or roles from {ROLES[1:]}")
    if reduce not in ("mean", "max"):
        raise ConfigError(f"reduce must be 'mean' or 'max', not {reduce!r}")
    rows = []
    for batch in batches(tokenizer, prompts, batch_size):
        _, cache = scoped.run_with_cache(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            names=[name],
            stop_after_last=True,
        )
        feats = dense(cache[name]).float()
        if roles[0] in _POSITIONS:
            rows.append(batch.gather(feats, roles[0]))
            continue
        mask = batch.role_mask(*roles)[..., None]
        if not bool(mask.any(1).all()):
            raise ConfigError(f"a prompt has no position tagged {roles}")
        if reduce == "max":
            rows.append(feats.masked_fill(~mask, float("-inf")).amax(1))
        else:
            rows.append((feats * mask).sum(1) / mask.sum(1))
    return torch.cat(rows)


def text_windows(
    tokenizer: Any, texts: Sequence[str], window: int = 64, *, add_bos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``texts`` and cut each into windows of ``window`` tokens (the last one right-padded).

    Returns ``(input_ids, attention_mask)`` of shape [n_windows, window]. Each window starts
    with BOS when ``add_bos`` and the tokenizer has one, so windows read like documents.
    """
    if window < 2:
        raise ConfigError(f"window must be >= 2 tokens, got {window}")
    bos = tokenizer.bos_token_id if add_bos else None
    body = window - (bos is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, masks = [], []
    for text in texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(tokens), body):
            chunk = ([bos] if bos is not None else []) + tokens[start : start + body]
            ids.append(chunk + [pad] * (window - len(chunk)))
            masks.append([1] * len(chunk) + [0] * (window - len(chunk)))
    if not ids:
        raise ConfigError("no tokens in the given texts")
    return torch.tensor(ids), torch.tensor(masks)


def iter_window_features(
    scoped: ScopedModel,
    name: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 16,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yields ``(rows, features)`` per batch: features [rows, window, d_sae], zero at padding."""
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        with torch.no_grad():
            _, cache = scoped.run_with_cache(
                input_ids[rows], attention_mask=attention_mask[rows], names=[name], stop_after_last=True
            )
        yield rows, dense(cache[name]).float()


def window_features(
    scoped: ScopedModel,
    name: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 16,
) -> torch.Tensor:
    """[n_windows, window, d_sae] features of every token (zero at padding); for small corpora."""
    return torch.cat([f for _, f in iter_window_features(scoped, name, input_ids, attention_mask, batch_size)])
