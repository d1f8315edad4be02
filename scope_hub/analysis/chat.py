"""Chat-aware tokenization: render conversations with the tokenizer's chat template and tag
every token position with the role it belongs to.

Analyses of chat models care *where* they read activations: the last token of the user's
request, or the **answer position** — the last prompt position, the one right after the
generation prompt (``<|im_start|>assistant\\n`` in SmolLM2, ``<start_of_turn>model\\n`` in
Gemma), whose logits are the first model token. :func:`render_chat` renders each
conversation with ``tokenizer.apply_chat_template``, tokenizes the rendered text once with
character offsets, and tags each position:

* ``system`` / ``user`` / ``model``: the token overlaps that message's content
  (``assistant`` is called ``model``, as in Gemma's template);
* ``template``: role markers, turn separators, the default system prompt a template
  inserts by itself, the generation prompt;
* ``pad``: left padding (batches are left-padded so the answer position is always ``-1``).

Example:
    >>> from scope_hub.analysis.chat import render_chat
    >>> from scope_hub.testing.tiny_models import tiny_tokenizer
    >>> from tests.analysis.helpers import CHAT_TEMPLATE
    >>> tok = tiny_tokenizer(); tok.chat_template = CHAT_TEMPLATE
    >>> batch = render_chat(tok, ["Hi?", "Why not?"])
    >>> batch.input_ids.shape[0], batch.texts[0]
    (2, '<bos><|user|>\\nHi?<|end|>\\n<|model|>\\n')
    >>> "".join(tok.decode(t) for t in batch.select_ids(0, "user"))
    'Hi?'
    >>> batch.positions("last_user").tolist(), batch.positions("answer").tolist()
    ([[17], [17]], [[35], [35]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.errors import ConfigError

__all__ = ["ROLES", "ChatBatch", "Message", "as_conversation", "render_chat"]

ROLES = ("pad", "template", "system", "user", "model")
"""Position tags; ``role_ids`` holds their index in this tuple."""
_ROLE_OF_MESSAGE = {"system": "system", "user": "user", "assistant": "model", "model": "model"}

Message = Mapping[str, str]
Conversation = str | Sequence[Message]


def as_conversation(item: Conversation, system: str | None = None) -> list[dict[str, str]]:
    """A plain string becomes one user message (after an optional system message).

    Example:
        >>> as_conversation("Hello", system="Be brief.")
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hello'}]
    """
    if isinstance(item, str):
        messages = [{"role": "user", "content": item}]
    else:
        messages = [dict(m) for m in item]
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


@dataclass
class ChatBatch:
    """Left-padded token ids of rendered conversations, with per-position role tags."""

    input_ids: torch.Tensor
    """[batch, seq] token ids, left-padded."""
    attention_mask: torch.Tensor
    """[batch, seq] 1 for real tokens, 0 for padding."""
    role_ids: torch.Tensor
    """[batch, seq] index into :data:`ROLES` per position."""
    message_index: torch.Tensor
    """[batch, seq] index of the message a content token belongs to; -1 for template/pad."""
    texts: list[str]
    """The rendered conversations (what was tokenized)."""
    conversations: list[list[dict[str, str]]]
    """The messages as given (normalised to dicts)."""
    continuations: list[str] | None = None
    """Text appended after the generation prompt (tagged ``model``), if any."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from each row's first real token (left padding does not shift them)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a transformers forward (ids, mask, position ids)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def generate_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``generate`` (it derives positions from the mask itself)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def role_mask(self, *roles: str) -> torch.Tensor:
        """[batch, seq] bool: positions tagged with any of ``roles``."""
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ConfigError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
        codes = torch.tensor([ROLES.index(r) for r in roles])
        return torch.isin(self.role_ids, codes)

    def positions(self, selector: str) -> torch.Tensor:
        """[batch, 1] index of one position per row.

        ``answer`` (alias ``first_model``): the last prompt position, right after the
        generation prompt, whose logits give the first model token; ``last_user``: the
        last token of the last user message; ``last``: the last position of the row.
        """
        if selector in ("answer", "first_model", "last"):
            if self.continuations is not None and selector != "last":
                return self._last_of(self.role_mask("template"))
            return torch.full((len(self), 1), self.input_ids.shape[1] - 1)
        if selector == "last_user":
            return self._last_of(self.role_mask("user"))
        raise ConfigError(f"unknown position selector {selector!r}; use answer, first_model, last_user or last")

    def _last_of(self, mask: torch.Tensor) -> torch.Tensor:
        if not bool(mask.any(-1).all()):
            raise ConfigError("a conversation in this batch has no position of the requested kind")
        index = torch.arange(mask.shape[1]).expand_as(mask)
        return torch.where(mask, index, -1).max(-1, keepdim=True).values

    def select_ids(self, row: int, *roles: str) -> list[int]:
        """Token ids of ``row`` at positions tagged with ``roles``."""
        return self.input_ids[row][self.role_mask(*roles)[row]].tolist()

    def gather(self, hidden: torch.Tensor, selector: str) -> torch.Tensor:
        """[batch, d] rows of ``hidden`` [batch, seq, d] at :meth:`positions` ``selector``."""
        index = self.positions(selector).to(hidden.device)
        return hidden.gather(1, index[..., None].expand(-1, 1, hidden.shape[-1]))[:, 0]


def render_chat(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
    continuations: Sequence[str] | None = None,
) -> ChatBatch:
    """Render, tokenize, tag and left-pad ``conversations`` (strings are single user turns).

    ``continuations[i]`` is appended after row ``i``'s generation prompt and tagged
    ``model`` (a partial answer, e.g. chain-of-thought text the model is made to have written).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(
            f"{type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template (a Jinja string) "
            "or use a chat model's tokenizer"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("render_chat needs a fast tokenizer (character offsets); load it with use_fast=True")
    convs = [as_conversation(c, system) for c in conversations]
    if continuations is not None and len(continuations) != len(convs):
        raise ConfigError(f"{len(continuations)} continuations for {len(convs)} conversations")
    rows = []
    for i, messages in enumerate(convs):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        spans = _content_spans(text, messages)
        if continuations is not None:
            spans.append((len(text), len(text) + len(continuations[i]), "model", len(messages)))
            text += continuations[i]
        rows.append((text, *_tag(tokenizer, text, spans)))
    return _pad(tokenizer, rows, convs, list(continuations) if continuations is not None else None)


def _content_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int, str, int]]:
    # Message contents appear in the rendered text in order; find each after the previous one.
    spans, cursor = [], 0
    for index, message in enumerate(messages):
        role = _ROLE_OF_MESSAGE.get(message.get("role", ""))
        content = message.get("content", "")
        if role is None:
            raise ConfigError(f"message {index} has role {message.get('role')!r}; use system, user or assistant")
        start = text.find(content, cursor) if content else -1
        if content and start < 0:
            raise ConfigError(f"the chat template rewrote message {index}'s content; cannot tag its tokens")
        if start >= 0:
            spans.append((start, start + len(content), role, index))
            cursor = start + len(content)
    return spans


def _tag(tokenizer: Any, text: str, spans: list[tuple[int, int, str, int]]) -> tuple[list[int], list[int], list[int]]:
    # Chat templates write their own special tokens, so the tokenizer must not add more.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    roles, messages = [], []
    for start, end in encoded["offset_mapping"]:
        hit = next((s for s in spans if start < s[1] and end > s[0] and end > start), None)
        roles.append(ROLES.index(hit[2]) if hit else ROLES.index("template"))
        messages.append(hit[3] if hit else -1)
    return list(encoded["input_ids"]), roles, messages


def _pad(tokenizer: Any, rows: list, convs: list, continuations: list[str] | None) -> ChatBatch:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r[1]) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id if pad_id is not None else 0), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    role_ids = torch.zeros((len(rows), width), dtype=torch.long)
    message_index = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (_, tokens, roles, messages) in enumerate(rows):
        n = len(tokens)
        ids[i, width - n :] = torch.tensor(tokens)
        mask[i, width - n :] = 1
        role_ids[i, width - n :] = torch.tensor(roles)
        message_index[i, width - n :] = torch.tensor(messages)
    return ChatBatch(ids, mask, role_ids, message_index, [r[0] for r in rows], convs, continuations)
