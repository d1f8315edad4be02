"""Reusable test suite that every hookpoint adapter runs on a tiny model of its family.

Subclass :class:`AdapterSuite` in a ``test_*.py`` file and provide ``make_model``::

    class TestMyFamily(AdapterSuite):
        make_model = staticmethod(lambda: tiny_model("my_family"))  # from scope_hub.testing

Every site at every layer is checked against something computed another way:

* resid_pre / resid_post against ``output_hidden_states`` (transformers' own
  record), and the last layer's resid_post through the final norm and the
  unembedding against the logits;
* mlp_in against the MLP module's own input, and the adapter's mlp_block
  modules applied to mlp_in against mlp_out (what a transcoder replaces);
* mlp_out and the attention contribution sum to the residual update, and
  zero-ablating mlp_out lowers resid_post by exactly mlp_out (additivity);
* attn_out is heads x head_dim wide, is the o_proj's input, and zeroing it
  leaves the attention contribution token-independent (only biases remain);
* stop_after at the adapter's stop hookpoint gives the full-forward tensor and
  never runs the later layers; bad sites, layers and models raise typed errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from scope_hub.errors import HookpointError, UnsupportedModelError
from scope_hub.hookpoints import SITES, Hookpoint, adapter_for, resolve_hookpoint
from scope_hub.hooks import attached_hookpoints, capture, replace, stop_after

ATOL = 1e-5
TEXTS = ["The quick brown fox", "jumps over the lazy"]


def _ids(n_vocab: int) -> torch.Tensor:
    # Byte ids of fixed text (all tiny models have >= 256 tokens); no padding: masks are not the point here.
    rows = [list(t.encode())[:16] for t in TEXTS]
    ids = torch.tensor(rows)
    assert int(ids.max()) < n_vocab
    return ids


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


class AdapterSuite:
    """Base class: set ``make_model`` (a zero-argument factory returning an eval-mode causal LM)."""

    make_model: Callable[[], Any]

    # Class-scoped fixtures are classmethods (pytest deprecates instance-method ones).
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> Any:
        return cls.make_model()

    @pytest.fixture(scope="class")
    @classmethod
    def adapter(cls, model: Any) -> Any:
        return adapter_for(model)

    @pytest.fixture(scope="class")
    @classmethod
    def ids(cls, model: Any) -> torch.Tensor:
        return _ids(model.get_input_embeddings().num_embeddings)

    @pytest.fixture(scope="class")
    @classmethod
    def acts(cls, model: Any, adapter: Any, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        hps = [adapter.hookpoint(s, layer) for layer in range(adapter.n_layers) for s in adapter.sites]
        hps += [adapter.attn_residual(layer) for layer in range(adapter.n_layers)]
        with torch.no_grad(), capture(model, hps) as got:
            got["_logits"] = model(ids).logits
        return got

    def at(self, acts: dict, adapter: Any, site: str, layer: int) -> torch.Tensor:
        return acts[str(adapter.hookpoint(site, layer))]

    # -- shape facts ----------------------------------------------------------------------------
    def test_sizes_match_config(self, model: Any, adapter: Any) -> None:
        assert adapter.sites == SITES
        assert adapter.n_layers == len(model.get_submodule(adapter.layers_path)) >= 2
        assert adapter.d_model == model.get_input_embeddings().embedding_dim

    def test_every_site_has_its_width(self, adapter: Any, acts: dict, ids: torch.Tensor) -> None:
        for layer in range(adapter.n_layers):
            for site in adapter.sites:
                assert self.at(acts, adapter, site, layer).shape == (*ids.shape, adapter.site_width(site)), (
                    site,
                    layer,
                )
        assert adapter.site_width("attn_out") == adapter.n_heads * adapter.head_dim

    def test_config_and_model_resolve_alike(self, model: Any, adapter: Any) -> None:
        for site in adapter.sites:
            assert resolve_hookpoint(model.config, site, 1) == resolve_hookpoint(model, site, 1)
            assert Hookpoint.parse(str(adapter.hookpoint(site, 1))) == adapter.hookpoint(site, 1)

    # -- residual stream --------------------------------------------------------------------------
    def test_resid_matches_output_hidden_states(self, model: Any, adapter: Any, acts: dict, ids: torch.Tensor) -> None:
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states
        n = adapter.n_layers
        assert len(hidden) == n + 1
        for layer in range(n):
            assert torch.equal(self.at(acts, adapter, "resid_pre", layer), hidden[layer]), layer
            if layer < n - 1:  # transformers stores the final-normed state as the last entry
                assert torch.equal(self.at(acts, adapter, "resid_post", layer), hidden[layer + 1]), layer
        final_norm = model.get_submodule(adapter.final_norm_path)
        with torch.no_grad():
            normed = final_norm(self.at(acts, adapter, "resid_post", n - 1))
        assert _close(normed, hidden[n])

    def test_last_resid_post_gives_the_logits(self, model: Any, adapter: Any, acts: dict) -> None:
        with torch.no_grad():
            normed = model.get_submodule(adapter.final_norm_path)(
                self.at(acts, adapter, "resid_post", adapter.n_layers - 1)
            )
            logits = model.get_output_embeddings()(normed)
        cap = getattr(adapter.config, "final_logit_softcapping", None)
        if cap:  # Gemma 2
            logits = torch.tanh(logits / cap) * cap
        assert _close(logits, acts["_logits"], atol=1e-4)

    def test_residual_update_is_attention_plus_mlp(self, adapter: Any, acts: dict) -> None:
        for layer in range(adapter.n_layers):
            update = self.at(acts, adapter, "resid_post", layer) - self.at(acts, adapter, "resid_pre", layer)
            parts = acts[str(adapter.attn_residual(layer))] + self.at(acts, adapter, "mlp_out", layer)
            assert _close(update, parts), layer

    # -- MLP ----------------------------------------------------------------------------------------
    def test_mlp_in_is_what_the_mlp_reads(self, model: Any, adapter: Any, ids: torch.Tensor) -> None:
        layer = adapter.n_layers - 1
        block = adapter.mlp_block(layer)
        mlp_input = Hookpoint(block.modules[0], "input")
        with torch.no_grad(), capture(model, [block.input, mlp_input]) as got:
            model(ids)
        assert torch.equal(got[str(block.input)], got[str(mlp_input)])

    def test_mlp_block_maps_mlp_in_to_mlp_out(self, model: Any, adapter: Any, acts: dict) -> None:
        for layer in range(adapter.n_layers):
            block = adapter.mlp_block(layer)
            assert (block.input, block.output) == (
                adapter.hookpoint("mlp_in", layer),
                adapter.hookpoint("mlp_out", layer),
            )
            x = acts[str(block.input)]
            with torch.no_grad():
                for path in block.modules:
                    x = model.get_submodule(path)(x)
            assert _close(x, acts[str(block.output)]), layer

    def test_mlp_out_is_additive_in_the_residual(self, model: Any, adapter: Any, acts: dict, ids: torch.Tensor) -> None:
        layer = 1
        mlp_out, post = adapter.hookpoint("mlp_out", layer), adapter.hookpoint("resid_post", layer)
        with torch.no_grad(), replace(model, mlp_out, torch.zeros_like), capture(model, [post]) as got:
            model(ids)
        expected = self.at(acts, adapter, "resid_post", layer) - self.at(acts, adapter, "mlp_out", layer)
        assert _close(got[str(post)], expected)

    # -- attention ----------------------------------------------------------------------------------
    def test_attn_out_is_the_output_projection_input(self, model: Any, adapter: Any, acts: dict) -> None:
        hp = adapter.hookpoint("attn_out", 0)
        assert hp.io == "input"
        proj = model.get_submodule(hp.module)
        with torch.no_grad():
            projected = proj(self.at(acts, adapter, "attn_out", 0))
        assert projected.shape[-1] == adapter.d_model

    def test_zeroed_attn_out_leaves_only_biases(self, model: Any, adapter: Any, ids: torch.Tensor) -> None:
        layer = 1
        contribution = adapter.attn_residual(layer)
        with (
            torch.no_grad(),
            replace(model, adapter.hookpoint("attn_out", layer), torch.zeros_like),
            capture(model, [contribution]) as got,
        ):
            model(ids)
        rows = got[str(contribution)].reshape(-1, adapter.d_model)
        assert _close(rows, rows[:1].expand_as(rows))  # every token gets the same (bias-only) vector

    # -- stopping early -----------------------------------------------------------------------------
    def test_stop_after_gives_the_full_forward_tensor(
        self, model: Any, adapter: Any, acts: dict, ids: torch.Tensor
    ) -> None:
        later = Hookpoint(adapter.layer_module(adapter.n_layers - 1), "output")
        for site in adapter.sites:
            hp = adapter.hookpoint(site, 0)
            stop = adapter.stop_hookpoint([hp])
            assert adapter.layer_of(stop) == 0
            with torch.no_grad(), capture(model, [hp, later]) as got, stop_after(model, stop) as run:
                model(ids)
            assert run.stopped and str(later) not in got, site
            assert torch.equal(got[str(hp)], acts[str(hp)]), site
        assert attached_hookpoints(model) == []

    # -- errors -----------------------------------------------------------------------------------
    def test_bad_site_lists_supported_sites(self, adapter: Any) -> None:
        with pytest.raises(UnsupportedModelError, match="resid_post"):
            adapter.hookpoint("resid_mid", 0)
        with pytest.raises(UnsupportedModelError, match="mlp_block"):
            adapter.hookpoint("mlp", 0)

    @pytest.mark.parametrize("layer", [-1, "all", 1.0, True])
    def test_bad_layer_types(self, adapter: Any, layer: Any) -> None:
        with pytest.raises(HookpointError, match="layers"):
            adapter.hookpoint("resid_post", layer)

    def test_layer_past_the_end(self, model: Any, adapter: Any) -> None:
        with pytest.raises(HookpointError, match=f"{adapter.n_layers} layers"):
            resolve_hookpoint(model, "resid_post", adapter.n_layers)
