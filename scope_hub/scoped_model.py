"""``ScopedModel``: any Hugging Face causal LM with dictionaries attached as hooks.

It wraps the transformers model the way PEFT's ``PeftModel`` does: calls,
``generate``, ``config``, ``device``, ``to`` ... reach the wrapped model, so
existing code keeps working. Attached dictionaries do nothing until a mode asks
for them; every mode is a context manager whose hooks are removed in
``finally``, and each mode object can also run a single call.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> torch.manual_seed(0) and None
    >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="topk", k=4, d_in=16, d_sae=32,
    ...                            site="resid_post", layer=0))
    >>> _ = [torch.nn.init.normal_(p, std=0.3) for p in sae.parameters()]
    >>> sm = ScopedModel.from_pretrained(lm, dictionaries={"sae": sae})
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> out, cache = sm.run_with_cache(ids)
    >>> cache["sae"].shape, torch.equal(out.logits, lm(ids).logits)
    (torch.Size([1, 4, 32]), True)
    >>> with sm.splice():
    ...     spliced = sm(ids).logits
    >>> bool((spliced != out.logits).any())
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scope_hub.attachment import Attachment, Mode, attachment_for, cache_length, resolve_hookpoints
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ArgumentError, ConfigError, NotAttachedError
from scope_hub.feature_stats import FeatureStats
from scope_hub.hookpoints import Hookpoint, adapter_for
from scope_hub.hooks import replace, stop_after
from scope_hub.kinds import kind
from scope_hub.model_resolution import describe_base, load_error, load_tokenizer, resolve_model
from scope_hub.scoped_config import ScopedModelConfig, load_dictionary_source, load_sources, save_scoped_config
from scope_hub.scoped_tokens import TokenizerMixin
from scope_hub.steering import feature_edits, stats_of

DictionarySource = str | Path | Dictionary
Positions = slice | Iterable[int] | int | None


class ScopedModel(TokenizerMixin, nn.Module):
    """A transformers causal LM plus named dictionaries, with observe/splice/steer modes."""

    model: Any
    """The wrapped transformers model (a submodule; typed loosely as transformers' classes are)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        base_model_id: str | None = None,
        revision: str | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.model = model
        source = base_model_id or getattr(model.config, "_name_or_path", None) or None
        self.base_model_id, self.base_model_revision = describe_base(source, revision)
        self._tokenizer_source = (source, revision)
        self._tokenizer = tokenizer
        self.feature_stats: dict[str, FeatureStats] = {}
        """Per-feature activation statistics by dictionary name (read from ``feature_stats.safetensors``
        beside a dictionary's weights when it has one); ``steer(..., unit="max"|"mean")`` uses them."""
        self._attachments: dict[str, Attachment] = {}
        self._sources: dict[str, dict[str, Any]] = {}
        self._dict_modules = nn.ModuleList()
        self._modes: list[Mode] = [Mode()]
        self._hook_stack: contextlib.ExitStack | None = None

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | nn.Module,
        dictionaries: Iterable[DictionarySource] | Mapping[str, DictionarySource] = (),
        *,
        revision: str | None = None,
        registry: Any = None,
        lazy: bool = False,
        tokenizer: Any = None,
        **hf_kwargs: Any,
    ) -> ScopedModel:
        """Load (or wrap) a causal LM and its tokenizer, and attach dictionaries.

        ``model``: a Hub id, a local folder (also one written by :meth:`save_pretrained`),
        a loaded ``PreTrainedModel``, or a model scope-hub converts offline (``gemma-3-270m``;
        ``google/gemma-3-270m`` falls back to it when the Hugging Face cache lacks it). Each
        dictionary: a registry key (``@ref`` allowed), a folder, or a :class:`Dictionary`; pass a
        mapping to choose names (a key in a list is named ``{site}_{layer}``, e.g. ``resid_post_12``,
        a folder by its name). Every dictionary is found and checked before the model loads, so a
        typo fails in a second, not after the load. ``tokenizer`` (default: loaded from the same
        folder or id as the model; see :attr:`tokenizer`). ``lazy`` (default False, as every
        scope-hub loader): True checks each weights file now but reads its tensors on first use,
        for attaching many dictionaries at little memory. ``hf_kwargs`` go to
        ``AutoModelForCausalLM.from_pretrained``.
        """
        if isinstance(model, (str, Path)) and (Path(model) / ScopedModelConfig.FILE).is_file():
            return cls._from_saved(Path(model), registry=registry, lazy=lazy, tokenizer=tokenizer, **hf_kwargs)
        loaded = load_sources(dictionaries, registry, lazy=lazy)
        base_id = None
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM

            base_id = resolve_model(model, revision)
            local = Path(base_id).is_dir()  # a folder, or a converted model standing in for its Hub id
            revision = None if local else revision
            try:
                model = AutoModelForCausalLM.from_pretrained(base_id, revision=revision, **hf_kwargs)
            except OSError as error:
                raise load_error(str(model), error) from error
            if tokenizer is None:
                tokenizer = load_tokenizer(base_id, revision, required=False)
        scoped = cls(model, base_model_id=base_id, revision=revision, tokenizer=tokenizer)
        for name, dictionary, record in loaded:
            scoped._attach_one(scoped._free_name(name, record), dictionary, source_record=record)
        return scoped

    @classmethod
    def _from_saved(cls, folder: Path, *, registry: Any, lazy: bool, tokenizer: Any, **hf_kwargs: Any) -> ScopedModel:
        config = ScopedModelConfig.read(folder)
        loaded = [load_dictionary_source(entry, folder, registry, lazy=lazy) for entry in config.dictionaries]
        scoped = cls.from_pretrained(
            config.base_model, revision=config.base_model_revision, lazy=lazy, tokenizer=tokenizer, **hf_kwargs
        )
        for entry, (dictionary, record) in zip(config.dictionaries, loaded):
            scoped._attach_one(entry.name, dictionary, source_record=record)
        return scoped

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``scoped_model.json``: base model id + revision and each dictionary pinned
        (registry keys with version and sha256; folders by path and sha256; in-memory
        dictionaries saved under ``dictionaries/``)."""
        return save_scoped_config(self, Path(folder))

    # --- attach / detach ------------------------------------------------------------------
    def attach(
        self,
        dictionaries: Iterable[DictionarySource] | Mapping[str, DictionarySource] | DictionarySource,
        *,
        name: str | None = None,
        registry: Any = None,
        lazy: bool = False,
    ) -> list[str]:
        """Attach dictionaries; returns their names (the given name; for a key in a list ``{site}_{layer}``,
        or the key without its ref when that name is taken; for a folder its name).

        ``lazy`` as in :meth:`from_pretrained` (default False: weights are read now).
        """
        if isinstance(dictionaries, (str, Path, Dictionary)):
            dictionaries = {name: dictionaries} if name else [dictionaries]
        loaded = load_sources(dictionaries, registry, lazy=lazy)
        return [self._attach_one(self._free_name(n, record), d, source_record=record) for n, d, record in loaded]

    def _free_name(self, name: str, record: dict[str, Any]) -> str:
        """``name``, or the source's full name when a derived short name is already attached."""
        if name in self._attachments and not record.get("given") and record.get("full_name"):
            return str(record["full_name"])
        return name

    def _attach_one(self, name: str, dictionary: Dictionary, source_record: dict[str, Any]) -> str:
        if name in self._attachments:
            raise ConfigError(f"a dictionary named {name!r} is already attached; detach it or pass another name")
        hook_in, hook_out = self._hookpoints_for(dictionary)
        stats = FeatureStats.load(source_record["folder"]) if source_record.get("folder") else None
        if stats is not None:
            stats.check_width(dictionary.config.d_sae, str(source_record["folder"]))
        param = next(self.model.parameters())
        dictionary.move_keeping_lazy(param.device, param.dtype)
        self._attachments[name] = attachment_for(name, dictionary, hook_in, hook_out)
        self._sources[name] = {**source_record, "name": name}
        self._dict_modules.append(dictionary)
        if stats is not None:
            self.feature_stats[name] = stats
        self._refresh_hooks()
        return name

    def detach(self, *names: str) -> None:
        """Remove dictionaries by name (all when no name is given)."""
        for name in names or list(self._attachments):
            attachment = self._attachments.pop(name)
            self._sources.pop(name)
            self.feature_stats.pop(name, None)
            for i, module in enumerate(self._dict_modules):
                if module is attachment.dictionary:
                    del self._dict_modules[i]
                    break
        self._refresh_hooks()

    def _hookpoints_for(self, dictionary: Dictionary) -> tuple[list[str], list[str]]:
        return resolve_hookpoints(self.model, dictionary.config, self._adapter)

    @property
    def dictionaries(self) -> dict[str, Dictionary]:
        """Attached dictionaries by name."""
        return {name: a.dictionary for name, a in self._attachments.items()}

    def hookpoints(self, name: str) -> tuple[list[str], list[str]]:
        """(read, write) hookpoints a dictionary resolved to, one per layer, e.g.
        ``(["model.layers.6.output"], ["model.layers.6.output"])`` for a layer-6 ``resid_post`` SAE;
        a transcoder reads the MLP input and writes the MLP output. Usable with ``scope_hub.hooks``."""
        attachment = self._attachments[self._names([name])[0]]
        return list(attachment.hook_in), list(attachment.hook_out)

    # --- modes ----------------------------------------------------------------------------
    def splice(self, *names: str, error_term: bool = False) -> ModeContext:
        """Replace each named (default: every) dictionary's site by its output.

        ``error_term=True`` adds back the exact error, so outputs equal the bare model's
        while gradients and interventions flow through the features.
        """
        chosen = frozenset(self._names(names))
        return ModeContext(self, splice=chosen, error_term=chosen if error_term else frozenset())

    def steer(
        self,
        name: str,
        feature: int | tuple[int, int],
        alpha: float,
        *,
        unit: str = "activation",
        positions: Positions = None,
    ) -> ModeContext:
        """Add ``alpha`` (in ``unit``) to the feature's activation: that times its decoder direction at the output site.

        ``unit="activation"`` (default): ``alpha`` is in the feature's own activation units;
        ``"max"``: multiples of its largest recorded activation (``alpha=2``: twice anything seen);
        ``"mean"``: multiples of its mean activation when it fires; ``"norm"``: a vector of ``alpha``
        x the output site's mean norm. All but the default need :attr:`feature_stats`
        (:mod:`scope_hub.steering`).

        ``positions`` (every edit takes it) limits the edit to some sequence positions: ints >= 0
        and slices with non-negative bounds are absolute positions (``[3, 4]``: those prompt tokens
        only, also during ``generate``; ``slice(3, None)``: position 3 and everything after it,
        generated tokens included); negative ints and slices with a negative bound count from the
        end of each forward call (``slice(-1, None)``: the prompt's last token, then each new
        token of ``generate``). Positions count padding: with left-padded batches an absolute
        position lands on different tokens per row.
        """
        return self._edit(name, feature, "add", alpha, positions, unit=unit)

    def clamp(
        self, name: str, feature: int | tuple[int, int], value: float, *, positions: Positions = None
    ) -> ModeContext:
        """Hold a feature's activation at ``value`` (the error term is kept)."""
        return self._edit(name, feature, "set", value, positions)

    def ablate(
        self, name: str, features: int | Iterable[int] | tuple[int, Iterable[int]], *, positions: Positions = None
    ) -> ModeContext:
        """Zero features (for a CLT: ``(layer_index, features)``)."""
        return self._edit(name, features, "set", 0.0, positions)

    def capture(self, *names: str, into: dict[str, Any]) -> ModeContext:
        """Record the live features of the named (default: every) dictionary into ``into`` on each forward.

        The dictionaries are spliced with their error term, so outputs equal the bare model's and the
        recorded tensors are the ones the forward decodes: gradients of anything downstream reach
        them (activation x gradient attribution), also when model and dictionary are frozen. Each
        forward overwrites the entries; padding is not masked (the tensor must stay the decoded
        one). For a CLT the record is a stacked copy of its layers' features, without gradients.
        Capturing several dictionaries splices each with a detached error term, so gradients reach
        an earlier dictionary's features through later reconstructions only (the replacement-model
        convention of attribution graphs); capture one at a time for the plain model's gradients.

        Example (``sm`` from the module example; a transcoder or SAE named ``"sae"``)::

            feats = {}
            with torch.enable_grad(), sm.capture("sae", into=feats):
                logit = sm(ids).logits[0, -1, target]
                grad, = torch.autograd.grad(logit, feats["sae"])
            attribution = feats["sae"] * grad     # [batch, seq, d_sae]
        """
        chosen = frozenset(self._names(names))
        # A crosscoder reads later layers, so it cannot be spliced; it is recorded as observed.
        spliced = frozenset(n for n in chosen if kind(self._attachments[n].dictionary.config.type).spliced)
        return ModeContext(self, splice=spliced, error_term=spliced, captures={n: ((into, True),) for n in chosen})

    @contextlib.contextmanager
    def disable_dictionaries(self) -> Iterator[None]:
        """No dictionary hook runs inside this context (like PEFT's ``disable_adapter()``)."""
        self._modes.append(Mode())
        self._refresh_hooks()
        try:
            yield
        finally:
            self._modes.pop()
            self._refresh_hooks()

    def _edit(
        self, name: str, feature: Any, op: str, value: float, positions: Positions = None, unit: str = "activation"
    ) -> ModeContext:
        dictionary = self._attachments[self._names([name])[0]].dictionary
        stats = self.feature_stats.get(name)
        return ModeContext(
            self, edits={name: feature_edits(name, dictionary, stats, feature, op, value, positions, unit)}
        )

    def measure_feature_stats(self, name: str, input_ids: torch.Tensor, **kwargs: Any) -> FeatureStats:
        """Measure (and keep in :attr:`feature_stats`) a dictionary's per-feature activation statistics
        on ``input_ids`` (``attention_mask`` in ``kwargs`` excludes padding), for ``steer(..., unit=...)``
        with dictionaries that came without them. Returns them; ``stats.save(folder)`` stores them."""
        attachment = self._attachments[self._names([name])[0]]
        site: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor) -> torch.Tensor:
            site["act"] = act
            return act

        one_site = len(attachment.hook_out) == 1  # a CLT writes several: no single site norm
        with (
            torch.no_grad(),
            replace(self.model, attachment.hook_out[0], grab) if one_site else contextlib.nullcontext(),
        ):
            _, cache = self.run_with_cache(input_ids, names=[name], **kwargs)
        self.feature_stats[name] = stats_of(
            attachment.dictionary, cache[name], site.get("act"), kwargs.get("attention_mask")
        )
        return self.feature_stats[name]

    def _names(self, names: Iterable[str]) -> list[str]:
        names = list(names) or list(self._attachments)
        unknown = [n for n in names if n not in self._attachments]
        if unknown:
            raise NotAttachedError(
                f"no attached dictionary named {unknown[0]!r}; attached: {sorted(self._attachments)}",
                name=unknown[0],
                choices=tuple(sorted(self._attachments)),
            )
        return names

    # --- hooks ----------------------------------------------------------------------------
    def _push_mode(self, **changes: Any) -> None:
        """Stack a mode on the current one: dictionary sets, edits and capture targets accumulate; flags replace."""
        top = self._modes[-1]
        edits = dict(top.edits)
        for name, new in changes.pop("edits", {}).items():
            edits[name] = edits.get(name, ()) + new
        merged = {field: getattr(top, field) | changes.pop(field, frozenset()) for field in ("splice", "error_term")}
        captures = dict(top.captures)
        for name, targets in changes.pop("captures", {}).items():
            captures[name] = captures.get(name, ()) + targets
        self._modes.append(dataclasses.replace(top, edits=edits, captures=captures, **merged, **changes))
        try:
            self._refresh_hooks()
        except BaseException:  # e.g. a mode a dictionary cannot do: leave the model as it was
            self._modes.pop()
            self._refresh_hooks()
            raise

    def _pop_mode(self) -> None:
        self._modes.pop()
        self._refresh_hooks()

    def _refresh_hooks(self) -> None:
        if self._hook_stack is not None:
            stack, self._hook_stack = self._hook_stack, None
            stack.close()
        mode = self._modes[-1]
        stack = contextlib.ExitStack()
        try:
            if mode.has_positional_edits():  # absolute positions need the KV cache's length per call
                clock = mode.clock
                handle = self.model.register_forward_pre_hook(
                    lambda _module, args, kwargs: setattr(clock, "offset", cache_length(args, kwargs)), with_kwargs=True
                )
                stack.callback(handle.remove)
            for attachment in self._attachments.values():
                for hookpoint, fn in attachment.hooks(mode):
                    stack.enter_context(replace(self.model, hookpoint, fn))
        except BaseException:
            stack.close()
            raise
        self._hook_stack = stack

    # --- running --------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with the active modes applied at every step (KV cache included)."""
        return self.model.generate(*args, **kwargs)

    @torch.no_grad()
    def run_with_cache(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        names: Iterable[str] | None = None,
        sparse: bool = False,
        stop_after_last: bool = False,
        stop_at_layer: int | None = None,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """Run the model and return ``(outputs, cache)``, ``cache[name]`` = that dictionary's features.

        Features at padded positions (``attention_mask == 0``) are zeroed. With
        ``stop_after_last=True`` the forward stops after the last hooked layer
        (outputs are None): the fast path when only features are needed.
        ``stop_at_layer=L`` (SAELens's spelling) runs decoder layers ``0..L-1`` only (outputs are
        None); dictionaries at later layers then capture nothing.
        """
        cache: dict[str, Any] = {}
        chosen = frozenset(self._names(names or []))
        self._push_mode(
            captures={n: ((cache, False),) for n in chosen}, sparse=sparse, attention_mask=kwargs.get("attention_mask")
        )
        try:
            stop_at = self._stop_hookpoint(chosen) if stop_after_last else None
            if stop_at_layer is not None:
                stop_at = self._layer_stop(stop_at_layer)
            if stop_at is None:
                return self.model(input_ids=input_ids, **kwargs), cache
            with stop_after(self.model, stop_at):
                self.model(input_ids=input_ids, **kwargs)
            return None, cache
        finally:
            self._pop_mode()

    def _layer_stop(self, layer: int) -> Hookpoint:
        """Where a forward that runs decoder layers ``0..layer-1`` ends."""
        adapter = self._adapter()
        if not isinstance(layer, int) or not 0 <= layer <= adapter.n_layers:
            raise ArgumentError(
                f"stop_at_layer={layer!r}: use 0..{adapter.n_layers} (layers run before stopping)",
                argument="stop_at_layer",
                value=layer,
            )
        if layer == 0:
            return Hookpoint(adapter.layer_module(0), "input")
        return Hookpoint(adapter.layer_module(layer - 1), "output")

    def _stop_hookpoint(self, names: Iterable[str]) -> Hookpoint | None:
        hookpoints = [hp for n in names for hp in self._attachments[n].hook_in + self._attachments[n].hook_out]
        return self._adapter().stop_hookpoint(hookpoints)

    def _adapter(self) -> Any:
        # adapter_for(model) validates every layer's module paths (~0.3 ms); the wrapped
        # model's structure does not change, so validate once per ScopedModel, not once per
        # hookpoint resolved (twice per attached dictionary) and per run_with_cache call.
        adapter = self.__dict__.get("_adapter_cache")
        if adapter is None:
            adapter = self.__dict__["_adapter_cache"] = adapter_for(self.model)
        return adapter

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["model"], name)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {type(a.dictionary).__name__}" for n, a in self._attachments.items())
        return f"ScopedModel({type(self.model).__name__}, dictionaries={{{inner}}})"


class ModeContext:
    """A mode of a ScopedModel: a context manager, or ``mode(*args)`` / ``mode.generate(...)`` for one call."""

    def __init__(self, scoped: ScopedModel, **changes: Any) -> None:
        self._scoped = scoped
        self._changes = changes

    def __enter__(self) -> ScopedModel:
        self._scoped._push_mode(**self._changes)
        return self._scoped

    def __exit__(self, *exc_info: Any) -> None:
        self._scoped._pop_mode()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self:
            return self._scoped(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self:
            return self._scoped.generate(*args, **kwargs)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        with self:
            return self._scoped.run_with_cache(*args, **kwargs)
