"""Which dictionaries replace which MLP blocks, and their math seen as encoder/decoder vectors.

Attribution needs each MLP block (``mlp_in -> mlp_out``) of the model either
replaced by a transcoder (one per layer; skip transcoders included) or by one
cross-layer transcoder (CLT) spanning several layers. Layers without a
dictionary are allowed: their whole MLP output becomes an error node.

Everything here works in the dictionary's own conventions (Gemma Scope 2
names, ``constant_scale`` normalization folded into the vectors), so an edge is
always ``activation x (decoder row . gradient)`` and a target is always
``encoder column . mlp_in + b_enc``.

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> model = tiny_gemma3()
    >>> tcs = [make_dictionary(make_config("transcoder", "relu", d_in=64, d_out=64, d_sae=8,
    ...        site="mlp_in", site_out="mlp_out", layer=L)) for L in range(3)]
    >>> ts = TranscoderSet(model, tcs)
    >>> [(b.layer, b.hook_out) for b in ts.blocks][:1]
    [(0, 'model.layers.0.post_feedforward_layernorm.output')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from scope_hub.dictionaries import CrossLayerTranscoder, Dictionary, SkipTranscoder, Transcoder
from scope_hub.errors import ConfigError
from scope_hub.hookpoints import Hookpoint, adapter_for, resolve_hookpoint


@dataclass(frozen=True)
class Block:
    """One MLP block read/written by a dictionary (for a CLT: one of its layers)."""

    layer: int
    """Model layer of the block."""
    hook_in: str
    """Where the encoder reads (usually mlp_in)."""
    hook_out: str
    """The MLP block's output, which the replacement overwrites (mlp_out)."""
    name: str
    """Name of the dictionary (as attached / given)."""
    dictionary: Dictionary
    """A Transcoder / SkipTranscoder, or the CLT this block belongs to."""
    clt_index: int | None = None
    """Position of this block in the CLT's ``layers`` (None for single-layer transcoders)."""


def _scales(d: Dictionary) -> tuple[float, float]:
    norm = d.config.normalization
    return (norm.scale_in, norm.scale_out) if norm.kind == "constant_scale" else (1.0, 1.0)


class TranscoderSet:
    """Dictionaries replacing a model's MLP blocks: per-layer transcoders or one CLT.

    ``dictionaries``: a mapping name -> Dictionary, or a sequence of them. Each
    dictionary must write the MLP block output of its layer(s) (site ``mlp_out``
    or an explicit ``hook_point_out`` naming it).
    """

    def __init__(self, model: nn.Module, dictionaries: Mapping[str, Dictionary] | Iterable[Dictionary]) -> None:
        items = (
            list(dictionaries.items())
            if isinstance(dictionaries, Mapping)
            else [(f"dictionary_{i}", d) for i, d in enumerate(dictionaries)]
        )
        if not items:
            raise ConfigError("attribution needs at least one transcoder or CLT")
        self.adapter = adapter_for(model)
        self.n_layers = self.adapter.n_layers
        blocks: list[Block] = []
        for name, d in items:
            blocks += self._blocks_of(model, name, d)
        layers = [b.layer for b in blocks]
        if len(set(layers)) != len(layers):
            dup = sorted({L for L in layers if layers.count(L) > 1})
            raise ConfigError(f"several dictionaries replace the MLP block of layer(s) {dup}; give one per layer")
        clts = {id(b.dictionary) for b in blocks if b.clt_index is not None}
        if (clts and len(blocks) != sum(b.clt_index is not None for b in blocks)) or len(clts) > 1:
            raise ConfigError(
                "mix of a CLT with other dictionaries is not supported; give one CLT or per-layer transcoders"
            )
        self.blocks: list[Block] = sorted(blocks, key=lambda b: b.layer)
        self.names = [name for name, _ in items]
        for d in self.dictionaries:
            d.eval()

    # --- construction -----------------------------------------------------------------------
    def _blocks_of(self, model: nn.Module, name: str, d: Dictionary) -> list[Block]:
        if not isinstance(d, (Transcoder, CrossLayerTranscoder)):
            raise ConfigError(
                f"{name}: a {d.config.type} cannot replace an MLP block; attribution needs transcoders, "
                "skip transcoders or a CLT (an SAE only reconstructs its own site)"
            )
        config = d.config
        layers = config.layers if config.layers is not None else [config.layer]
        explicit_in, explicit_out = config.hook_points()
        blocks = []
        for i, layer in enumerate(layers):
            if explicit_in is None and layer is None:
                raise ConfigError(f"{name}: its config names neither hook_point_in nor a layer")
            hook_in = self._resolve(model, explicit_in, config.site or "mlp_in", layer)
            hook_out = self._resolve(model, explicit_out, config.site_out or "mlp_out", layer)
            model_layer = self.adapter.layer_of(hook_out)
            expected = str(self.adapter.mlp_block(model_layer).output) if model_layer is not None else None
            if model_layer is None or hook_out != expected:
                raise ConfigError(
                    f"{name}: writes {hook_out}, which is not an MLP block output (expected e.g. {expected}); "
                    "attribution replaces MLP blocks"
                )
            clt_index = i if isinstance(d, CrossLayerTranscoder) else None
            blocks.append(Block(model_layer, hook_in, hook_out, name, d, clt_index))
        return blocks

    @staticmethod
    def _resolve(model: nn.Module, explicit: str | None, site: str, layer: int | None) -> str:
        if explicit is not None:
            hp = Hookpoint.parse(explicit.replace("{layer}", str(layer)))
        elif layer is None:
            raise ConfigError(f"a dictionary at site {site} names neither a hook point nor a layer")
        else:
            hp = resolve_hookpoint(model, site, int(layer))
        hp.resolve(model)  # fail now, not mid-forward
        return str(hp)

    # --- facts ------------------------------------------------------------------------------
    @property
    def dictionaries(self) -> list[Dictionary]:
        """Each distinct dictionary once."""
        return list({id(b.dictionary): b.dictionary for b in self.blocks}.values())

    @property
    def is_clt(self) -> bool:
        return self.blocks[0].clt_index is not None

    def block_at(self, layer: int) -> Block | None:
        """The block replacing model layer ``layer``'s MLP, if any."""
        return next((b for b in self.blocks if b.layer == layer), None)

    def block_for(self, layer: int) -> Block:
        """The block replacing model layer ``layer``'s MLP (a layer with features always has one)."""
        block = self.block_at(layer)
        if block is None:
            raise ConfigError(f"no dictionary replaces the MLP block of layer {layer}; features cannot live there")
        return block

    def mlp_out(self, layer: int) -> str:
        """The MLP block output hookpoint of any model layer (replaced during replay)."""
        return str(self.adapter.mlp_block(layer).output)

    def mlp_module(self, layer: int) -> str:
        """The expensive MLP module of a layer (skipped during replay)."""
        return self.adapter.mlp_block(layer).modules[0]

    def writers_of(self, block: Block) -> list[Block]:
        """Blocks whose features write to ``block``'s output."""
        return [source for source in self.blocks if block in self.writes_to(source)]

    def writes_to(self, block: Block) -> list[Block]:
        """Blocks whose output this block's features write to: itself, plus every later one for a CLT."""
        return (
            [b for b in self.blocks if b.clt_index is not None and b.clt_index >= block.clt_index]
            if block.clt_index is not None
            else [block]
        )

    # --- math -------------------------------------------------------------------------------
    def encode(self, block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, pre-activations) ``[..., d_sae]`` of ``block`` for its input ``x``."""
        d = block.dictionary
        x = x.to(self.dtype(block))
        pre = x * _scales(d)[0] @ self.w_enc(block) + self._param(block, "b_enc")
        threshold = self._param(block, "threshold") if d.activation.uses_threshold else None
        return d.activation(pre, threshold, False), pre

    def w_enc(self, block: Block) -> torch.Tensor:
        return self._param(block, "w_enc")

    def b_enc(self, block: Block) -> torch.Tensor:
        return self._param(block, "b_enc")

    def _param(self, block: Block, name: str) -> torch.Tensor:
        d = block.dictionary  # detached: analysis never trains, and grads on weights would pin activations
        return d.get_parameter(f"per_layer.{block.clt_index}.{name}" if block.clt_index is not None else name).detach()

    def dtype(self, block: Block) -> torch.dtype:
        return self.w_enc(block).dtype

    def encoder_vectors(self, block: Block, idx: torch.Tensor) -> torch.Tensor:
        """``[n, d_in]``: the gradient to inject at ``hook_in`` so it reads a feature's pre-activation."""
        return self.w_enc(block)[:, idx].T * _scales(block.dictionary)[0]

    def decoder_vectors(self, source: Block, target: Block, idx: torch.Tensor) -> torch.Tensor:
        """``[n, d_out]``: what one unit of each feature of ``source`` adds at ``target``'s output."""
        return self._decoder_matrix(source, target)[idx] / _scales(source.dictionary)[1]

    def decode_sparse(
        self, source: Block, target: Block, pos: torch.Tensor, idx: torch.Tensor, act: torch.Tensor, n_pos: int
    ) -> torch.Tensor:
        """``[n_pos, d_out]``: what features ``(pos, idx)`` of ``source`` with activations ``act`` write at ``target``."""
        rows = self.decoder_vectors(source, target, idx) * act[:, None].to(self.dtype(source))
        return rows.new_zeros(n_pos, rows.shape[-1]).index_add_(0, pos, rows)

    def b_dec(self, block: Block) -> torch.Tensor:
        """The decoder bias at ``block``'s output (in output units)."""
        return self._param(block, "b_dec") / _scales(block.dictionary)[1]

    def _decoder_matrix(self, source: Block, target: Block) -> torch.Tensor:
        w_dec = self._param(source, "w_dec")  # a view, never a copy: CLT decoders can be GBs
        if source.clt_index is None or target.clt_index is None:
            return w_dec
        return w_dec[:, target.clt_index - source.clt_index]

    def skip(self, block: Block, x: torch.Tensor) -> torch.Tensor | None:
        """The affine skip path's output for ``x`` (None when the dictionary has none)."""
        d = block.dictionary
        if isinstance(d, SkipTranscoder):
            return d.skip(x)
        if isinstance(d, CrossLayerTranscoder) and d.config.affine_skip and block.clt_index is not None:
            return d.skip_layer(block.clt_index, x)
        return None

    def decode_into(self, target: Block, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Decoder output (b_dec included) at ``target`` from ``features[layer]`` of the blocks writing there."""
        out = self._param(target, "b_dec")
        for source in self.blocks:
            if source.layer in features and target in self.writes_to(source):
                out = out + features[source.layer].to(out.dtype) @ self._decoder_matrix(source, target)
        return out / _scales(target.dictionary)[1]
