"""Every public loader takes ``lazy`` the same way and, by default, reads the weights at the call.

A default that differs between loaders makes the same folder load differently depending on the
door it came in by (and a NaN or a truncated tensor surface at a different call), so the test
drives each entry point over each kind of source and reads ``is_loaded`` off what it returns.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from scope_hub import load_dictionary
from scope_hub.dictionaries import SAE, Dictionary
from scope_hub.hookpoints import adapter_for
from scope_hub.registry import Registry
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import tiny_model

ENTRY_POINTS = {
    "Dictionary.from_pretrained": Dictionary.from_pretrained,
    "SAE.from_pretrained": SAE.from_pretrained,
    "load_dictionary": load_dictionary,
    "ScopedModel.from_pretrained": ScopedModel.from_pretrained,
    "ScopedModel.attach": ScopedModel.attach,
}
KEY = "tiny:resid_post/layer_1/width_48/sae"


def test_every_loader_takes_lazy_as_a_keyword_with_one_default():
    defaults = {}
    for name, loader in ENTRY_POINTS.items():
        parameter = inspect.signature(loader).parameters.get("lazy")
        assert parameter is not None, f"{name} takes no lazy keyword"
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        defaults[name] = parameter.default
    assert set(defaults.values()) == {False}, f"loaders disagree on (or changed) the documented default: {defaults}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny model, one SAE that fits it, saved as a folder and pushed to a file:// registry."""
    tmp = tmp_path_factory.mktemp("loaders")
    model = tiny_model("gemma3")
    width = adapter_for(model).site_width("resid_post")
    sae = make_dictionary(make_config("sae", "jumprelu", d_in=width, d_sae=48, site="resid_post", layer=1))
    folder = sae.save_pretrained(tmp / "sae")
    registry = Registry((tmp / "registry").as_uri(), cache_dir=tmp / "cache")
    registry.push(folder, KEY, license="mit")
    return model, sae, folder, registry


def _routes(model, folder, registry):
    """Every way a user loads one dictionary: name -> call(**lazy_kwargs) returning the Dictionary."""

    def attached(**kw):
        sm = ScopedModel(model)
        sm.attach(folder, name="d", **kw)
        return sm.dictionaries["d"]

    return {
        "Dictionary.from_pretrained(folder)": lambda **kw: Dictionary.from_pretrained(folder, **kw),
        "SAE.from_pretrained(folder)": lambda **kw: SAE.from_pretrained(folder, **kw),
        "load_dictionary(folder)": lambda **kw: load_dictionary(folder, **kw),
        "load_dictionary(key)": lambda **kw: load_dictionary(KEY, registry=registry, **kw),
        "ScopedModel.from_pretrained(folder)": lambda **kw: ScopedModel.from_pretrained(
            model, dictionaries={"d": folder}, **kw
        ).dictionaries["d"],
        "ScopedModel.from_pretrained(key)": lambda **kw: ScopedModel.from_pretrained(
            model, dictionaries={"d": KEY}, registry=registry, **kw
        ).dictionaries["d"],
        "ScopedModel.attach(folder)": attached,
    }


def test_every_loader_reads_weights_by_default_and_defers_them_when_lazy(sources):
    model, sae, folder, registry = sources
    by_default, when_lazy = {}, {}
    for route, load in _routes(model, folder, registry).items():
        eager, lazy = load(), load(lazy=True)
        by_default[route], when_lazy[route] = eager.is_loaded, lazy.is_loaded
        for loaded in (eager, lazy):  # either way the weights are the saved ones, bit for bit
            for name, param in sae.named_parameters():
                assert torch.equal(loaded.get_parameter(name), param), f"{route}: {name}"
    assert all(by_default.values()), f"not every loader reads the weights by default: {by_default}"
    assert not any(when_lazy.values()), f"lazy=True did not reach every loader: {when_lazy}"
