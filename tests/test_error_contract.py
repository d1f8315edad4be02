"""Bad input to a public entry point raises a scope-hub error (typed, with a message), never a bare builtin.

Hypothesis drives keys and refs, config dicts, config folders, registry URLs, kind names and
ScopedModel edit/attach arguments; anything but a :class:`ScopeHubError` (or success) fails.
Over 2,000 generated cases in the default run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scope_hub import kinds
from scope_hub.config_io import validate_config
from scope_hub.errors import ScopeHubError
from scope_hub.keys import parse_key, parse_ref
from scope_hub.tensor_layout import check_folder

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_PARTS = st.sampled_from(
    ["google/gemma-3-270m", "m", ":", "/", "@", "resid_post", "mlp", "layer_", "12", "all", "width_", "16k", "sae",
     "clt", "l0_small", "v2", "latest", "sha256:", "3f9a2c1b7e44", "..", " ", "é", "-", "_", "\x00"]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["schema_version", "type", "architecture", "d_in", "d_sae", "d_out", "k", "layer", "layers", "site",
          "site_out", "affine_skip", "dtype", "normalization", "matryoshka_groups", "hook_point_in"]  # fmt: skip
GOOD_VALUES = st.sampled_from(
    [*kinds.KINDS, *kinds.ARCHITECTURES, *kinds.SITES, 1, 4, 8, 0, -1, [0, 1], "float32", True, None]
)


def _only_scope_hub_errors(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ScopeHubError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
    except Exception as exc:  # the contract under test: nothing else escapes
        pytest.fail(f"{call.__qualname__}{args!r} raised bare {type(exc).__name__}: {exc}")


@FAST
@given(st.lists(KEY_PARTS, max_size=12).map("".join) | st.text(max_size=40))
def test_keys_and_refs(text):
    _only_scope_hub_errors(parse_key, text)
    _only_scope_hub_errors(parse_ref, text)


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), GOOD_VALUES | JSON, max_size=8))
def test_config_dicts(raw):
    _only_scope_hub_errors(validate_config, raw)


@FAST
@given(st.text(max_size=30) | st.integers() | st.none())
def test_kind_and_architecture_names(name):
    _only_scope_hub_errors(kinds.kind, name)
    _only_scope_hub_errors(kinds.architecture, name)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
        st.dictionaries(st.sampled_from(FIELDS), GOOD_VALUES | JSON, max_size=8).map(json.dumps),
    ),
    st.booleans(),
)
def test_config_folders(text, with_weights):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(text, encoding="latin-1")
        if with_weights:
            (folder / "params.safetensors").write_bytes(text.encode("latin-1")[:16])
        _only_scope_hub_errors(check_folder, folder)


@FAST
@given(
    st.sampled_from(
        ["file://", "memory://", "s3://", "hf://", "ftp://", "", "/", "..", "~", "C:\\", "hf://datasets/"]
    ).flatmap(lambda scheme: st.text(max_size=20).map(lambda rest: scheme + rest))
)
def test_registry_urls(url):
    from scope_hub.registry.backends import normalize_url

    _only_scope_hub_errors(normalize_url, url)


@pytest.fixture(scope="module")
def scoped():
    from scope_hub.scoped_model import ScopedModel
    from scope_hub.testing.dictionaries import make_config, make_dictionary
    from scope_hub.testing.tiny_models import tiny_llama

    model = tiny_llama()
    width = model.config.hidden_size
    sae = make_dictionary(make_config("sae", "relu", d_in=width, d_sae=8, site="resid_post", layer=1))
    return ScopedModel.from_pretrained(model, dictionaries={"sae": sae})


EDIT_ARGS = st.one_of(st.integers(-20, 20), st.lists(st.integers(-20, 20), max_size=3), st.text(max_size=3), st.none())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["steer", "clamp", "ablate"]),
    st.sampled_from(["sae", "nope", ""]),
    EDIT_ARGS,
    st.one_of(st.none(), st.integers(-3, 3), st.builds(slice, st.integers(-3, 3), st.none(), st.integers(-2, 2))),
)
def test_scoped_model_edits(scoped, verb, name, feature, positions):
    args = (name, feature) if verb == "ablate" else (name, feature, 1.0)
    _only_scope_hub_errors(getattr(scoped, verb), *args, positions=positions)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=20) | st.sampled_from(["google/gemma-3-270m:resid_post/layer_1/width_8/sae", "/nonexistent"]))
def test_scoped_model_attach_sources(scoped, source):
    _only_scope_hub_errors(scoped.attach, source, name="probe", registry="memory://error-contract")


def test_errors_carry_what_a_program_needs(tmp_path, scoped):
    import pickle

    import torch
    from safetensors.torch import save_file

    from scope_hub.errors import (
        DictionaryNotFoundError,
        FeatureIndexError,
        KeyParseError,
        NotAttachedError,
        ShapeMismatchError,
    )

    with pytest.raises(KeyParseError) as bad_key:
        parse_key("google/gemma-3-270m:resid_post/layer_12/width_16k/nope")
    assert (bad_key.value.part, bad_key.value.key) == ("type", "google/gemma-3-270m:resid_post/layer_12/width_16k/nope")
    config = {"schema_version": 1, "type": "sae", "architecture": "relu", "d_in": 4, "d_sae": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = {"w_enc": torch.zeros(4, 9), "b_enc": torch.zeros(8), "w_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)}
    save_file(tensors, tmp_path / "params.safetensors")
    with pytest.raises(ShapeMismatchError) as shape:
        check_folder(tmp_path)
    assert (shape.value.tensor, shape.value.expected, shape.value.actual) == ("w_enc", (4, 8), (4, 9))
    again = pickle.loads(pickle.dumps(shape.value))  # data survives a worker process boundary
    assert again.actual == (4, 9) and str(again) == str(shape.value)
    with pytest.raises(NotAttachedError) as missing:
        scoped.ablate("nope", 1)
    assert missing.value.choices == ("sae",) and isinstance(missing.value, KeyError)
    with pytest.raises(FeatureIndexError) as index:
        scoped.ablate("sae", 99)
    assert (index.value.index, index.value.size) == (99, 8)
    assert issubclass(DictionaryNotFoundError, LookupError) and issubclass(DictionaryNotFoundError, FileNotFoundError)


def test_every_exception_class_lives_in_errors_py():
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for top in ("scope_hub", "trainers"):
        for path in sorted((root / top).rglob("*.py")):
            if path.name == "errors.py" and path.parent.name == "scope_hub":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.ClassDef)
                    and not node.name.startswith("_")
                    and any(
                        getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception"))
                        for base in node.bases
                    )
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert found == [], "define exception classes in scope_hub/errors.py:\n" + "\n".join(found)
