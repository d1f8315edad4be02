"""The tokenizer side of :class:`~scope_hub.scoped_model.ScopedModel`, as TransformerLens users know it.

``sm.tokenizer`` is loaded from the same folder or Hub id as the model (offline included: a
converted model carries its tokenizer); ``to_tokens``, ``to_string`` and ``to_str_tokens``
behave like TransformerLens's helpers of the same names.

Example:
    >>> from scope_hub import ScopedModel                          # doctest: +SKIP
    >>> sm = ScopedModel.from_pretrained("google/gemma-3-270m")    # doctest: +SKIP
    >>> sm.to_str_tokens("Hello world")                            # doctest: +SKIP
    ['<bos>', 'Hello', ' world']
"""

from __future__ import annotations

from typing import Any

import torch

from scope_hub.model_resolution import load_tokenizer


class TokenizerMixin:
    """Tokenizer access for a class holding ``model``, ``_tokenizer`` and ``_tokenizer_source`` ``(id, revision)``."""

    model: Any
    _tokenizer: Any
    _tokenizer_source: tuple[str | None, str | None]

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded from the same folder or id as the model (offline included).

        A wrapped ``PreTrainedModel`` gets it from ``config._name_or_path`` without any download;
        ``from_pretrained(..., tokenizer=tok)`` or ``sm.tokenizer = tok`` sets one explicitly.
        """
        if self._tokenizer is None:
            source, revision = self._tokenizer_source
            self._tokenizer = load_tokenizer(source, revision, required=True, local_only=True)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def to_tokens(self, text: str | list[str], *, prepend_bos: bool = True) -> torch.Tensor:
        """Token ids ``[batch, seq]`` on the model's device, like TransformerLens's ``to_tokens``.

        ``prepend_bos`` adds the tokenizer's special tokens (Gemma: ``<bos>``). Batches are
        padded on the tokenizer's padding side; call ``sm.tokenizer(...)`` for the attention mask.
        """
        texts = [text] if isinstance(text, str) else list(text)
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=prepend_bos)
        return batch.input_ids.to(self.model.device)

    def to_string(self, tokens: torch.Tensor | list[int]) -> str | list[str]:
        """Decode ids back to text: one string for ``[seq]``, a list for ``[batch, seq]``."""
        ids = torch.as_tensor(tokens)
        if ids.dim() == 2:
            return [self.tokenizer.decode(row) for row in ids.tolist()]
        return self.tokenizer.decode(ids.tolist())

    def to_str_tokens(self, text: str | torch.Tensor, *, prepend_bos: bool = True) -> list[str]:
        """Each token of one text (or of ``[seq]`` ids) as a string, e.g. ``['<bos>', 'Hello', ' world']``."""
        ids = self.to_tokens(text, prepend_bos=prepend_bos)[0] if isinstance(text, str) else torch.as_tensor(text)
        return [self.tokenizer.decode([i]) for i in ids.reshape(-1).tolist()]
