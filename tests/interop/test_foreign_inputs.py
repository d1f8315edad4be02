"""Bad foreign folders: a mutated config is a typed error naming its file, and NaN/inf weights
are refused (naming the tensor) unless ``allow_nonfinite=True``, for every foreign format.

The config cases start from a folder each converter exported, replace one field (top level or
nested) of its config file with arbitrary JSON, and load it again: the load may succeed or
raise a :class:`~scope_hub.errors.ScopeHubError` whose message names the folder (a ConfigError:
the config file, with the bad field in ``field``); anything else
(a pydantic ValidationError, KeyError, TypeError ...) fails with the input that caused it.
"""

from __future__ import annotations

import json
import math
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scope_hub.errors import ConfigError, NonFiniteWeightsError, ScopeHubError
from scope_hub.interop.formats import get_format
from scope_hub.kinds import kind
from scope_hub.sources import load_folder
from tests.interop.cases import CASES
from tests.test_fuzz_inputs import fuzz_settings, json_values

# (format, kind, activation, extra) exported once; the config file and the fields to mutate.
FOREIGN_CONFIGS = {
    "saelens": (
        ("sae", "topk", {}),
        "cfg.json",
        [
            ("architecture",),
            ("d_in",),
            ("d_sae",),
            ("k",),
            ("activation_fn",),
            ("activation_fn_kwargs",),
            ("apply_b_dec_to_input",),
            ("normalize_activations",),
            ("rescale_acts_by_decoder_norm",),
            ("metadata",),
            ("metadata", "model_name"),
            ("metadata", "hook_name"),
            ("metadata", "hook_name_out"),
            ("metadata", "hf_hook_name"),
            ("metadata", "hook_head_index"),
            ("metadata", "scope_hub"),
            ("metadata", "scope_hub", "layer"),
            ("metadata", "scope_hub", "d_sae"),
        ],
    ),
    "sparsify": (
        ("sae", "topk", {}),
        "cfg.json",
        [
            ("activation",),
            ("d_in",),
            ("k",),
            ("num_latents",),
            ("expansion_factor",),
            ("transcode",),
            ("scope_hub",),
        ],
    ),
    "dictionary-learning": (
        ("sae", "topk", {"matryoshka_groups": [4, 12]}),
        "config.json",
        [
            ("trainer",),
            ("trainer", "dict_class"),
            ("trainer", "lm_name"),
            ("trainer", "layer"),
            ("trainer", "submodule_name"),
            ("scope_hub",),
            ("scope_hub", "model"),
            ("scope_hub", "matryoshka_groups"),
        ],
    ),
}


def _exported(root: Path, fmt: str) -> tuple[Path, dict[str, Any]]:
    from scope_hub.testing.dictionaries import make_config, make_dictionary

    (type_, arch, extra), config_file, _ = FOREIGN_CONFIGS[fmt]
    folder = root / fmt / "layers.3"  # sparsify names folders after the hookpoint
    get_format(fmt).save(make_dictionary(make_config(type_, arch, **extra)), folder)
    return folder, json.loads((folder / config_file).read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("foreign")
    return {fmt: _exported(root, fmt) for fmt in FOREIGN_CONFIGS}


def _replaced(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with the field at ``path`` set to ``value`` (parents created)."""
    copy = json.loads(json.dumps(document))
    node = copy
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return copy


mutations = st.sampled_from(sorted(FOREIGN_CONFIGS)).flatmap(
    lambda fmt: st.tuples(
        st.just(fmt),
        st.sampled_from(FOREIGN_CONFIGS[fmt][2]),
        json_values | st.sampled_from(["topk", "jumprelu", "AutoEncoderTopK", -1, 0, 2.5, 10**30, "layers.3"]),
    )
)


@fuzz_settings(300)
@given(mutations)
def test_mutated_foreign_configs_raise_typed_errors(exported, mutation):
    fmt, path, value = mutation
    folder, original = exported[fmt]
    config_file = folder / FOREIGN_CONFIGS[fmt][1]
    config_file.write_text(json.dumps(_replaced(original, path, value)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unusable embedded config is ignored with a warning
            get_format(fmt).load(folder)
    except ConfigError as exc:
        assert str(config_file) in str(exc) and exc.data.get("field"), f"names no file and field: {exc}"
    except ScopeHubError as exc:
        assert str(folder) in str(exc), f"{type(exc).__name__} does not name the folder: {exc}"
    except Exception:
        pytest.fail(f"untyped error for {fmt} {'.'.join(path)} = {value!r}:\n{traceback.format_exc()}")
    finally:
        config_file.write_text(json.dumps(original))


# --- NaN / inf weights ---------------------------------------------------------------------------

FOREIGN_CASES = [c for c in CASES if c.fmt != "scope-hub"]


def _poison(folder: Path) -> str:
    """Put a NaN into the first float weight of ``folder`` (any of its file formats); its name."""
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file, save_file

            arrays = load_file(str(path))
            name = sorted(n for n, a in arrays.items() if a.dtype.kind == "f" and a.size > 1)[0]
            arrays[name] = arrays[name].copy()
            arrays[name].flat[1] = np.nan
            save_file(arrays, str(path))
            return name
        if path.suffix == ".npz":
            with np.load(path) as data:
                arrays = {n: data[n] for n in data.files}
            name = sorted(n for n, a in arrays.items() if a.dtype.kind == "f" and a.size > 1)[0]
            arrays[name] = arrays[name].copy()
            arrays[name].flat[1] = np.inf
            np.savez(path, **arrays)
            return name
        if path.suffix == ".pt":
            state = torch.load(path, weights_only=True)
            name = sorted(n for n, t in state.items() if t.is_floating_point() and t.numel() > 1)[0]
            state[name].view(-1)[1] = math.nan
            torch.save(state, path)
            return name
    raise AssertionError(f"no weights file in {folder}")


@pytest.mark.parametrize("case", FOREIGN_CASES, ids=lambda c: c.id)
def test_nonfinite_foreign_weights_are_refused_unless_allowed(tmp_path, case):
    folder = tmp_path / "out"
    get_format(case.fmt).save(case.make(), folder)
    _poison(folder)
    with pytest.raises(NonFiniteWeightsError, match="tensor '.*' contains NaN or inf; pass allow_nonfinite=True"):
        load_folder(folder, fmt=case.fmt)
    with pytest.warns(RuntimeWarning, match="contains NaN or inf"):
        loaded = load_folder(folder, fmt=case.fmt, allow_nonfinite=True)
    assert not all(bool(torch.isfinite(p).all()) for p in loaded.parameters())


# --- tensors of the wrong shape ------------------------------------------------------------------


def _tensor_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".npz", ".pt")]


def _shorten(path: Path, name: str) -> None:
    """Drop the last row of tensor ``name`` in ``path`` (a truncated bias, a decoder short of a latent)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file, save_file

        arrays = load_file(str(path))
        arrays[name] = np.ascontiguousarray(arrays[name][:-1])
        save_file(arrays, str(path))
    elif path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {n: data[n] for n in data.files}
        arrays[name] = arrays[name][:-1]
        np.savez(path, **arrays)
    else:
        state = torch.load(path, weights_only=True)
        state[name] = state[name][:-1].clone()
        torch.save(state, path)


def _names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as handle:
            return [n for n in handle.keys() if len(handle.get_slice(n).get_shape()) >= 1]  # noqa: SIM118
    if path.suffix == ".npz":
        with np.load(path) as data:
            return [n for n in data.files if data[n].ndim >= 1]
    return [n for n, t in torch.load(path, weights_only=True).items() if t.dim() >= 1]


@pytest.mark.parametrize("case", FOREIGN_CASES, ids=lambda c: c.id)
def test_foreign_tensors_of_the_wrong_shape_raise_typed_errors(tmp_path, case):
    source = tmp_path / "source"
    get_format(case.fmt).save(case.make(), source)
    for file in _tensor_files(source):
        for name in _names(file):
            folder = tmp_path / f"{file.stem}-{name}".replace("/", "_")
            folder.mkdir()
            for part in source.iterdir():
                (folder / part.name).write_bytes(part.read_bytes())
            _shorten(folder / file.name, name)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # an edited folder warns that its embedded config is stale
                    loaded = load_folder(folder, fmt=case.fmt)
            except ScopeHubError:
                continue
            except Exception:
                pytest.fail(f"untyped error for {case.id}, {file.name}:{name} one row short:\n{traceback.format_exc()}")
            # Formats that state no sizes infer them from the tensors: a transcoder with one input
            # dimension fewer is a valid folder, but what loads must describe its tensors exactly.
            config = loaded.config
            assert tuple(loaded.w_enc.shape[-2:]) == (config.d_in, config.d_sae), (case.id, name)
            assert loaded.w_dec.shape[-1] == config.d_out, (case.id, name)
            assert config.d_in == config.d_out or not kind(config.type).reconstructs_input, (case.id, name)


def test_a_saelens_transcoder_rescaled_by_decoder_norms_loads_with_its_output_space_b_dec(tmp_path):
    # The shape checks must not hold a transcoder's b_dec [d_out] to the input width.
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d_in, d_sae, d_out = 6, 16, 8
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_out, generator=g),
        "b_dec": torch.randn(d_out, generator=g),
    }
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    hooks = {"hook_name": "blocks.3.ln2.hook_normalized", "hook_name_out": "blocks.3.hook_mlp_out"}
    cfg = {
        "architecture": "transcoder",
        "d_in": d_in,
        "d_sae": d_sae,
        "d_out": d_out,
        "activation_fn": "relu",
        "apply_b_dec_to_input": False,
        "rescale_acts_by_decoder_norm": True,
        "metadata": {"model_name": "gemma-3-270m", **hooks},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_folder(tmp_path, fmt="saelens")
    x = torch.randn(32, d_in, generator=g, dtype=torch.float64).numpy()
    w = {k: v.double().numpy() for k, v in t.items()}
    # Folding the decoder norms into the encoder leaves the transcoder's function unchanged.
    expected = np.maximum(x @ w["W_enc"] + w["b_enc"], 0) @ w["W_dec"] + w["b_dec"]
    got = loaded(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
