"""Seeded fuzzing of the public entry points: bad input is a scope-hub error, never a bare builtin.

Hypothesis drives keys, config.json files, safetensors headers, registry URLs, dictionary
folders (tensor shapes, dtypes, values) and attach arguments on a tiny Gemma 3. Each case may
succeed or raise :class:`~scope_hub.errors.ScopeHubError`; anything else fails the test with
the input that caused it. Registry cases also check that nothing is written outside the
registry root and the cache. ``derandomize=True`` makes every run draw the same cases
(about 2,100 in all, well under a minute on one core).
"""

from __future__ import annotations

import json
import os
import struct
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from scope_hub.config_io import read_config, read_safetensors_header
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ScopeHubError
from scope_hub.interop import gemma_scope_2
from scope_hub.keys import SITES, parse_key
from scope_hub.kinds import KINDS
from scope_hub.loading import load_dictionary
from scope_hub.metadata import SCHEMA_VERSION
from scope_hub.registry import Registry

D_IN, D_SAE = 4, 8


def fuzz_settings(n: int) -> Callable:
    return settings(
        max_examples=n,
        derandomize=True,  # seeded: the same cases every run
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def only_scope_hub_errors(call: Callable[[], Any], case: object) -> Any:
    """The call's result, None on a ScopeHubError; any other exception fails with the input."""
    try:
        return call()
    except ScopeHubError:
        return None
    except Exception as exc:  # the defect this module exists to find
        pytest.fail(f"{type(exc).__name__} escaped for input {case!r}:\n{traceback.format_exc()}")


def good_config(**changes: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "sae",
        "architecture": "relu",
        "d_in": D_IN,
        "d_sae": D_SAE,
        **changes,
    }


def good_tensors(d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "b_enc": np.zeros(d_sae, np.float32),
        "w_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": np.zeros(d_in, np.float32),
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CONFIG_FIELDS = [
    "schema_version",
    "type",
    "architecture",
    "d_in",
    "d_sae",
    "d_out",
    "k",
    "layer",
    "layers",
    "site",
    "site_out",
    "model",
    "dtype",
    "hook_point_in",
    "hook_point_out",
    "width_label",
    "affine_skip",
    "provenance",
    "normalization",
    "hf_hook_point_in",
    "width",
    "unknown_field",
]
mutated_configs = st.builds(
    lambda field, value, drop: {k: v for k, v in {**good_config(), field: value}.items() if k != drop},
    st.sampled_from(CONFIG_FIELDS),
    json_values | st.sampled_from(["sae", "transcoder", "clt", "jumprelu", "topk", "resid_post", -1, 0, 10**30]),
    st.none() | st.sampled_from(CONFIG_FIELDS),
)
gemma_scope_2_configs = st.builds(
    lambda field, value, type_: {
        "hf_hook_point_in": "model.layers.3.output",
        "hf_hook_point_out": "model.layers.3.output",
        "width": D_SAE,
        "model_name": "gemma-v3-270m-pt",
        "architecture": "jump_relu",
        "l0": 10,
        "type": type_,
        field: value,
    },
    st.sampled_from(
        ["hf_hook_point_in", "hf_hook_point_out", "width", "model_name", "architecture", "l0", "type", "layers"]
    ),
    json_values,
    st.sampled_from(["sae", "transcoder", "crosscoder", "clt"]),
)
config_documents = (
    mutated_configs.map(lambda c: json.dumps(c).encode())
    | gemma_scope_2_configs.map(lambda c: json.dumps(c).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
    | st.integers(1, 3000).map(lambda n: b"[" * n * 40)
    | st.integers(4000, 6000).map(lambda n: b'{"schema_version": 1, "d_in": ' + b"7" * n + b"}")
)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A valid dictionary folder the cases overwrite one file of."""
    path = tmp_path / "dict"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(good_config()))
    save_file(good_tensors(), str(path / "params.safetensors"))
    return path


# --- keys ------------------------------------------------------------------------------------

KEY_ALPHABET = "abcz09/:_@.-" + "".join(SITES[:3]) + "layer_width_vsha256:\x00 \n/\\é"
good_keys = st.builds(
    lambda site, type_, layer, width, ref: f"google/gemma-3-270m:{site}/layer_{layer}/width_{width}/{type_}{ref}",
    st.sampled_from(SITES),
    st.sampled_from(sorted(KINDS)),
    st.sampled_from(["6", "all", "5-9", "-1", "x", "9" * 30]),
    st.sampled_from(["16k", "8", "0", "k", "1m", "9" * 30]),
    st.sampled_from(["", "@v1", "@latest", "@v0", "@sha256:abc", "@" + "a" * 300, "@@v1"]),
)


def _mutate(text: str, cut: int, insert: str) -> str:
    at = cut % (len(text) + 1)
    return text[:at] + insert + text[at + 1 :]


@fuzz_settings(700)
@given(
    st.one_of(
        st.text(KEY_ALPHABET, max_size=80),
        st.text(max_size=40),
        st.builds(_mutate, good_keys, st.integers(0, 200), st.text(KEY_ALPHABET, max_size=3)),
    )
)
def test_key_strings(text):
    key = only_scope_hub_errors(lambda: parse_key(text), text)
    if key is not None:
        assert parse_key(str(key)) == key  # whatever parses, round-trips


# --- config.json and safetensors headers ---------------------------------------------------------


@fuzz_settings(450)
@given(config_documents)
def test_config_json_documents(folder, document):
    (folder / "config.json").write_bytes(document)
    only_scope_hub_errors(lambda: read_config(folder), document[:200])
    only_scope_hub_errors(lambda: load_dictionary(folder), document[:200])
    only_scope_hub_errors(lambda: gemma_scope_2.load(folder), document[:200])


def _header_file(header: Any, body: bytes, declared: int | None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    size = len(text) if declared is None else declared
    return struct.pack("<Q", size % 2**64) + text + body


header_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "BOOL", "U8", "F8_E4M3", "XYZ", ""]),
        "shape": st.lists(st.integers(-2, 2**40), max_size=4),
        "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3),
    }
)
headers = st.dictionaries(
    st.sampled_from(["w_enc", "b_enc", "w_dec", "b_dec", "threshold", "__metadata__", "other"]),
    header_entries | json_values,
    max_size=5,
)


@fuzz_settings(350)
@given(
    headers | json_values | st.binary(max_size=40),
    st.binary(max_size=64),
    st.none() | st.integers(0, 2**64 - 1) | st.integers(0, 200),
)
def test_safetensors_headers(folder, header, body, declared):
    path = folder / "params.safetensors"
    path.write_bytes(_header_file(header, body, declared))
    only_scope_hub_errors(lambda: read_safetensors_header(path), (header, declared))
    only_scope_hub_errors(lambda: Dictionary.from_pretrained(folder), (header, declared))


# --- dictionary folders: tensor names, shapes, dtypes, values ------------------------------------

tensor_changes = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["w_enc", "b_enc", "w_dec", "b_dec", "threshold", "extra"]),
        "action": st.sampled_from(["drop", "reshape", "dtype", "nan", "inf", "empty", "keep"]),
        "dim": st.integers(0, 9),
        "dtype": st.sampled_from([np.float16, np.float64, np.int32, np.int8, np.uint8, np.bool_]),
        "architecture": st.sampled_from(["relu", "jumprelu", "topk", "batchtopk"]),
        "lazy": st.booleans(),
    }
)


def _changed_tensors(change: dict[str, Any]) -> dict[str, np.ndarray]:
    tensors = good_tensors()
    if change["architecture"] == "jumprelu":
        tensors["threshold"] = np.full(D_SAE, 0.1, np.float32)
    name, action = change["name"], change["action"]
    base = tensors.get(name, np.zeros(3, np.float32))
    if action == "drop":
        tensors.pop(name, None)
    elif action == "reshape":
        tensors[name] = np.zeros((*base.shape[:-1], change["dim"]), np.float32)
    elif action == "dtype":
        tensors[name] = base.astype(change["dtype"])
    elif action in ("nan", "inf"):
        tensors[name] = base.copy()
        tensors[name].flat[0] = np.nan if action == "nan" else np.inf
    elif action == "empty":
        tensors[name] = np.zeros((0,), np.float32)
    else:
        tensors[name] = base
    return tensors


@fuzz_settings(200)
@given(tensor_changes)
def test_dictionary_folders(folder, change):
    extra = {"k": 2} if change["architecture"] in ("topk", "batchtopk") else {}
    (folder / "config.json").write_text(json.dumps(good_config(architecture=change["architecture"], **extra)))
    save_file(_changed_tensors(change), str(folder / "params.safetensors"))
    module = only_scope_hub_errors(lambda: Dictionary.from_pretrained(folder, lazy=change["lazy"]), change)
    if module is not None:
        import torch

        only_scope_hub_errors(lambda: module.encode(torch.ones(2, D_IN)), change)


# --- registry URLs: typed errors, nothing written outside the registry root ----------------------

url_texts = st.one_of(
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from(["file://", "file:", "file:///", "memory://", "s3://", "s3:///", "hf://", "ftp://", "", "./"]),
        st.text("abc/._-:@?#%=\x00 é" + "x" * 5, max_size=40),
    ),
    st.builds(lambda n: "reg/" + "a" * n, st.integers(200, 5000)),
    st.text(max_size=30),
)


def _tree(root: Path) -> set[str]:
    return {str(Path(folder, name)) for folder, dirs, files in os.walk(root) for name in dirs + files}


@fuzz_settings(350)
@given(url_texts)
def test_registry_urls(tmp_path, monkeypatch, url):
    if url.startswith("/") or "~" in url or ".." in url:
        return  # keep every case inside the sandbox folder
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(exist_ok=True)
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never leave the machine
    before = _tree(tmp_path)
    reg = only_scope_hub_errors(lambda: Registry(url, cache_dir=tmp_path / "cache", progress=False), url)
    if reg is not None and reg.url.startswith(("file://", "memory://")):
        only_scope_hub_errors(lambda: reg.list(), url)
        only_scope_hub_errors(lambda: reg.resolve_version("m:resid_post/layer_1/width_8/sae"), url)
    roots = [tmp_path / "cache"]
    if reg is not None and reg.url.startswith("file://"):
        from scope_hub.registry.backends.file import path_of_url

        roots.append(path_of_url(reg.url))
    new = _tree(tmp_path) - before
    outside = [p for p in new if not any(Path(p).is_relative_to(r) for r in roots)]
    assert outside == [], (url, outside)


# --- attach arguments on a tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def scoped():
    from scope_hub.scoped_model import ScopedModel
    from scope_hub.testing.tiny_models import tiny_gemma3

    return ScopedModel(tiny_gemma3())


@fuzz_settings(120)
@given(
    st.sampled_from([*SITES, "resid", "mlp_in", "", "RESID_POST"]),
    st.integers(-3, 6) | st.sampled_from(["all", "1-2", "x"]),
    st.sampled_from([64, 63, 128, 1]),
    st.sampled_from(["sae", "transcoder"]),
    st.none() | st.text(max_size=10),
)
def test_attach_arguments(scoped, tmp_path, site, layer, d_in, type_, name):
    folder = tmp_path / "attach"
    folder.mkdir(exist_ok=True)
    config = good_config(type=type_, d_in=d_in, d_sae=D_SAE, d_out=d_in, site=site, layer=layer)
    if type_ == "transcoder":
        config.update(site="mlp_in", site_out=site)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(good_tensors(d_in), str(folder / "params.safetensors"))
    case = (site, layer, d_in, type_, name)
    try:
        only_scope_hub_errors(lambda: scoped.attach(str(folder), name=name), case)
    finally:
        scoped.detach()


# --- lockfiles and peer configs ------------------------------------------------------------------


@fuzz_settings(150)
@given(
    json_values
    | st.builds(
        lambda field, value: {"lockfile_version": 1, "entries": [{field: value}]},
        st.sampled_from(["registry", "key", "version", "manifest_sha256", "content_sha256"]),
        json_values,
    )
)
def test_lockfiles(tmp_path, document):
    from scope_hub.registry.lockfile import Lockfile

    path = tmp_path / "scope.lock"
    path.write_text(json.dumps(document))
    only_scope_hub_errors(lambda: Lockfile.load(path), document)


@fuzz_settings(100)
@given(
    st.sampled_from(["model_kind", "model_name", "feature_input_hook", "feature_output_hook", "transcoders"]),
    json_values,
)
def test_circuit_tracer_configs(tmp_path, field, value):
    import yaml

    from scope_hub.interop import circuit_tracer

    folder = tmp_path / "ct"
    folder.mkdir(exist_ok=True)
    tensors = good_tensors()
    save_file(
        {
            "W_enc": tensors["w_enc"].T.copy(),
            "b_enc": tensors["b_enc"],
            "W_dec": tensors["w_dec"],
            "b_dec": tensors["b_dec"],
        },
        str(folder / "layer_0.safetensors"),
    )
    config = {
        "model_kind": "transcoder_set",
        "model_name": "google/gemma-2-2b",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        field: value,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    only_scope_hub_errors(lambda: circuit_tracer.load_all(folder), config)
