"""Native format: bit-exact round trips, lazy loading, Gemma Scope 2 folders as published, bad input."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scope_hub.dictionaries import Dictionary, SkipTranscoder
from scope_hub.errors import (
    ConfigError,
    DictionaryNotFoundError,
    NonFiniteWeightsError,
    ScopeHubError,
    ShapeMismatchError,
    UnsafeFormatError,
    WeightsFileError,
)
from scope_hub.loading import load_dictionary
from scope_hub.testing.dictionaries import make_config, make_dictionary

FIXTURES = Path(__file__).parent / "fixtures"
KIND_CASES = [
    ("sae", "jumprelu"),
    ("sae", "topk"),
    ("sae", "batchtopk"),
    ("sae", "relu"),
    ("transcoder", "jumprelu"),
    ("skip_transcoder", "jumprelu"),
    ("clt", "jumprelu"),
    ("crosscoder", "topk"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("type_", "architecture"), KIND_CASES)
def test_round_trip_is_bit_exact(tmp_path, type_, architecture, dtype):
    module = make_dictionary(make_config(type_, architecture), dtype=dtype)
    module.save_pretrained(tmp_path / "d")
    for lazy in (False, True):
        loaded = Dictionary.from_pretrained(tmp_path / "d", lazy=lazy)
        assert type(loaded) is type(module) and loaded.config == module.config.model_copy(
            update={"dtype": str(dtype).removeprefix("torch.")}
        )
        for (name, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
            assert a.dtype == b.dtype and torch.equal(a, b), name
    expected = (
        {"config.json", "params.safetensors"}
        if type_ != "clt"
        else {"config.json", *(f"params_layer_{i}.safetensors" for i in range(3))}
    )
    assert {p.name for p in (tmp_path / "d").iterdir()} == expected


@pytest.mark.parametrize(("type_", "architecture"), KIND_CASES)
def test_a_fresh_dictionary_is_initialised_and_saves(tmp_path, type_, architecture):
    from scope_hub.dictionaries import KINDS

    torch.manual_seed(0)
    config = make_config(type_, architecture)
    module = KINDS[type_](config)  # like nn.Linear: usable values, never torch.empty garbage
    for spec in module.tensor_specs(config):
        param = module.get_parameter(spec.attr).detach()
        if spec.name in ("w_enc", "w_dec"):
            axes = [a for a in range(param.ndim) if a != spec.latent_axis]
            torch.testing.assert_close(param.norm(dim=axes), torch.ones(config.d_sae))
        else:
            assert not param.any(), spec.attr
    module.save_pretrained(tmp_path / "fresh")
    loaded = Dictionary.from_pretrained(tmp_path / "fresh")
    for spec in module.tensor_specs(config):
        assert torch.equal(loaded.get_parameter(spec.attr), module.get_parameter(spec.attr)), spec.attr


def test_lazy_load_reads_no_tensor_until_used(tmp_path, monkeypatch):
    make_dictionary(make_config("sae", "jumprelu")).save_pretrained(tmp_path / "d")
    reads = []
    import scope_hub.dictionaries.base as base

    real = base.load_tensors
    monkeypatch.setattr(base, "load_tensors", lambda *a, **k: reads.append(1) or real(*a, **k))
    lazy = Dictionary.from_pretrained(tmp_path / "d", lazy=True)
    assert not lazy.is_loaded and reads == []
    eager = Dictionary.from_pretrained(tmp_path / "d")
    x = torch.randn(4, 6)
    torch.testing.assert_close(lazy(x), eager(x), rtol=0, atol=0)
    assert lazy.is_loaded and len(reads) == 2


def test_load_dictionary_accepts_folder_and_rejects_garbage(tmp_path):
    make_dictionary(make_config("transcoder", "relu")).save_pretrained(tmp_path / "d")
    assert load_dictionary(str(tmp_path / "d")).config.type == "transcoder"
    with pytest.raises(DictionaryNotFoundError, match="neither a dictionary folder, a registry key"):
        load_dictionary(str(tmp_path / "nope"))


def _gemma_scope_2_folder(root: Path, name: str, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "params.safetensors"))
    return folder


def _gs2_tensors(d_in, d_sae, d_out, affine=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {
        "w_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "threshold": torch.rand(d_sae, generator=g),
        "w_dec": torch.randn(d_sae, d_out, generator=g),
        "b_dec": torch.randn(d_out, generator=g),
    }
    if affine:
        t["affine_skip_connection"] = torch.randn(d_in, d_out, generator=g)
    return t


def test_gemma_scope_2_sae_folder_loads_as_published(tmp_path):
    """Google's field names as published; the math is Gemma Scope 2's JumpReLU, written out here."""
    tensors = _gs2_tensors(8, 32, 8)
    config = {
        "hf_hook_point_in": "model.layers.12.output",
        "hf_hook_point_out": "model.layers.12.output",
        "width": 32,
        "model_name": "gemma-v3-270m-pt",
        "architecture": "jump_relu",
        "l0": 17,
        "affine_connection": False,
        "type": "sae",
    }
    folder = _gemma_scope_2_folder(tmp_path, "resid_post/layer_12_width_16k_l0_small", config, tensors)
    sae = load_dictionary(folder)
    c = sae.config
    assert (c.type, c.site, c.layer, c.model, c.l0_target) == ("sae", "resid_post", 12, "google/gemma-3-270m", 17)
    assert c.source_config == config and c.provenance.source == "gemma-scope-2"
    x = torch.randn(5, 8)
    pre = x @ tensors["w_enc"] + tensors["b_enc"]
    f = (pre > tensors["threshold"]) * torch.relu(pre)
    torch.testing.assert_close(sae(x), f @ tensors["w_dec"] + tensors["b_dec"])
    # Re-saving gives our superset format, which loads to the same dictionary.
    sae.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["schema_version"] == 1
    torch.testing.assert_close(load_dictionary(tmp_path / "ours")(x), sae(x), rtol=0, atol=0)


def test_gemma_scope_2_affine_transcoder_and_clt_folders_load(tmp_path):
    config = {
        "hf_hook_point_in": "model.layers.9.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.9.post_feedforward_layernorm.output",
        "width": 16,
        "model_name": "gemma-v3-1b-it",
        "architecture": "jump_relu",
        "l0": 40,
        "affine_connection": True,
        "type": "transcoder",
    }
    tensors = _gs2_tensors(8, 16, 8, affine=True)
    st = load_dictionary(
        _gemma_scope_2_folder(tmp_path, "transcoder/layer_9_width_16k_l0_medium_affine", config, tensors)
    )
    assert isinstance(st, SkipTranscoder) and (st.config.site, st.config.site_out) == ("mlp_in", "mlp_out")
    x = torch.randn(3, 8)
    pre = x @ tensors["w_enc"] + tensors["b_enc"]
    expected = (
        ((pre > tensors["threshold"]) * torch.relu(pre)) @ tensors["w_dec"]
        + tensors["b_dec"]
        + x @ tensors["affine_skip_connection"]
    )
    torch.testing.assert_close(st(x), expected)

    clt_dir = tmp_path / "clt" / "width_262k_l0_medium_affine"
    clt_dir.mkdir(parents=True)
    n = 3
    for i in range(n):
        t = _gs2_tensors(8, 16, 8, affine=True, seed=i)
        t["w_dec"] = torch.randn(16, n - i, 8)
        save_file(t, str(clt_dir / f"params_layer_{i}.safetensors"))
    (clt_dir / "config.json").write_text(
        json.dumps(
            {
                **config,
                "type": "clt",
                "hf_hook_point_in": "model.layers.0.pre_feedforward_layernorm.output",
                "hf_hook_point_out": "model.layers.0.post_feedforward_layernorm.output",
            }
        )
    )
    clt = load_dictionary(clt_dir)
    assert clt.config.type == "clt" and clt.config.layers == [0, 1, 2] and clt.config.affine_skip
    assert clt.config.hook_point_in == "model.layers.{layer}.pre_feedforward_layernorm.output"
    assert clt.w_dec(1).shape == (16, 2, 8)


def _saved(tmp_path, type_="sae", architecture="jumprelu") -> Path:
    return make_dictionary(make_config(type_, architecture)).save_pretrained(tmp_path / "d")


def _edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"d_sae": None}, ConfigError, "field 'd_sae': Field required"),
        ({"colour": "red"}, ConfigError, "field 'colour': Extra inputs are not permitted"),
        ({"d_sae": 17}, ShapeMismatchError, "tensor 'w_enc' has shape [6, 16] but config.json implies [6, 17]"),
        ({"dtype": "float16"}, ShapeMismatchError, "is float32 but config.json says dtype float16"),
        ({"architecture": "relu"}, ShapeMismatchError, "unexpected tensors ['threshold']"),
        ({"schema_version": 99}, ConfigError, "newer scope-hub"),
    ],
)
def test_bad_configs_get_one_line_errors_naming_file_and_field(tmp_path, changes, error, words):
    folder = _saved(tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(error) as info:
        Dictionary.from_pretrained(folder)
    message = str(info.value)
    assert words in message and "\n" not in message and str(folder) in message
    assert isinstance(info.value, ScopeHubError)


def test_truncated_and_non_safetensors_files_are_refused(tmp_path):
    folder = _saved(tmp_path)
    params = folder / "params.safetensors"
    params.write_bytes(params.read_bytes()[:-100])
    with pytest.raises(WeightsFileError, match="params.safetensors: not a readable safetensors file"):
        Dictionary.from_pretrained(folder)
    params.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(WeightsFileError):
        Dictionary.from_pretrained(folder)
    params.unlink()
    with pytest.raises(DictionaryNotFoundError, match="weights file not found"):
        Dictionary.from_pretrained(folder)


def test_nonfinite_weights_refused_by_default_and_warned_on_request(tmp_path):
    module = make_dictionary(make_config("sae", "relu"))
    with torch.no_grad():
        module.w_dec[0, 0] = float("nan")
    module.save_pretrained(tmp_path / "d")
    with pytest.raises(NonFiniteWeightsError, match="'w_dec' contains NaN or inf; pass allow_nonfinite=True"):
        Dictionary.from_pretrained(tmp_path / "d")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Dictionary.from_pretrained(tmp_path / "d", allow_nonfinite=True)
    assert any("NaN" in str(w.message) for w in caught)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_finite_check_is_exact_when_large_weights_overflow_the_sum(tmp_path, bad):
    module = make_dictionary(make_config("sae", "relu"))
    with torch.no_grad():
        module.w_enc.fill_(3e38)  # finite, but their float32 sum is inf: the quick check must not decide alone
    module.save_pretrained(tmp_path / "big")
    assert torch.equal(Dictionary.from_pretrained(tmp_path / "big").w_enc, module.w_enc)
    with torch.no_grad():
        module.w_enc[1, 2] = bad
    module.save_pretrained(tmp_path / "bad")
    with pytest.raises(NonFiniteWeightsError, match="'w_enc' contains NaN or inf"):
        Dictionary.from_pretrained(tmp_path / "bad")


def test_pickle_only_folder_is_never_unpickled(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "ae.pt").write_bytes(b"\x80\x04 would run code if unpickled")
    with pytest.raises(UnsafeFormatError, match="never unpickles"):
        Dictionary.from_pretrained(folder)


def test_failed_save_leaves_previous_folder_intact(tmp_path, monkeypatch):
    good = make_dictionary(make_config("sae", "relu"), seed=1)
    good.save_pretrained(tmp_path / "d")
    before = (tmp_path / "d" / "params.safetensors").read_bytes()
    import scope_hub.serialization as ser

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ser, "save_file", explode)
    with pytest.raises(OSError):
        make_dictionary(make_config("sae", "relu"), seed=2).save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "params.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "no staging folders left behind"


def _without_added_nones(parsed: dict, raw: dict) -> dict:
    """``parsed`` less the keys ``raw`` lacks whose value is None (recursively into nested dicts)."""
    out = {}
    for key, value in parsed.items():
        if key not in raw:
            if value is not None:
                out[key] = value
        elif isinstance(value, dict) and isinstance(raw[key], dict):
            out[key] = _without_added_nones(value, raw[key])
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("fixture", sorted(p.name for p in (FIXTURES / "configs").iterdir()))
def test_configs_of_every_released_schema_still_load(tmp_path, fixture):
    """Forward compatibility: each committed config.json (one per released schema) keeps loading."""
    from scope_hub.config_io import parse_config
    from scope_hub.metadata import SCHEMA_VERSION

    raw = json.loads((FIXTURES / "configs" / fixture).read_text())
    parsed = parse_config(raw, folder=tmp_path).model_dump(mode="json")
    if raw["schema_version"] == SCHEMA_VERSION:
        # Optional fields added within a schema version load as None; everything the file holds is unchanged.
        assert _without_added_nones(parsed, raw) == raw, "a current-schema config must load without any change"
    # Every field an old config set must survive migration with its meaning.
    for field in ("type", "architecture", "d_in", "d_sae", "d_out", "model", "matryoshka_groups"):
        assert parsed[field] == raw[field], field


def test_clt_layer_files_use_gemma_scope_2_full_width_decoders_and_compact_files_still_load(tmp_path):
    from safetensors.torch import load_file

    clt = make_dictionary(make_config("clt", "jumprelu", n_layers=3))
    clt.save_pretrained(tmp_path / "clt")
    stored = load_file(str(tmp_path / "clt" / "params_layer_1.safetensors"))["w_dec"]
    assert stored.shape == (16, 3, 8) and not stored[:, :1].any()  # zeros for layers before 1
    torch.testing.assert_close(stored[:, 1:], clt.w_dec(1), rtol=0, atol=0)
    # A compact file (decoders to layers i..n-1 only) is read the same way.
    compact = {
        k: {n: t[:, 1:].contiguous() if n == "w_dec" and "_1." in k else t for n, t in v.items()}
        for k, v in clt.tensors_by_file().items()
    }
    for name, tensors in compact.items():
        save_file(tensors, str(tmp_path / "clt" / name))
    again = Dictionary.from_pretrained(tmp_path / "clt")
    torch.testing.assert_close(again.w_dec(1), clt.w_dec(1), rtol=0, atol=0)


def test_gemma_scope_2_crosscoder_folder_goes_through_the_converter(tmp_path):
    config = {
        "hf_hook_point_in": "model.layers.5.output",
        "model_name": "gemma-v3-270m-pt",
        "architecture": "jump_relu",
        "type": "crosscoder",
    }
    folder = _gemma_scope_2_folder(tmp_path, "crosscoder/width_16k_l0_small", config, _gs2_tensors(32, 16, 32))
    with pytest.raises(ConfigError, match="scope_hub.interop.gemma_scope_2.load"):
        Dictionary.from_pretrained(folder)  # the native reader cannot split the layers; it names the converter
    loaded = load_dictionary(folder)  # the general loader detects the layout and converts
    from scope_hub.interop import gemma_scope_2

    converted = gemma_scope_2.load(folder)
    assert loaded.config.type == converted.config.type
    for name, tensor in converted.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_folders_get_the_permissions_of_the_umask_not_of_the_temp_staging(tmp_path, umask):
    previous = os.umask(umask)
    try:
        folder = make_dictionary(make_config("sae", "relu")).save_pretrained(tmp_path / "d")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
    assert modes == {"d": 0o777 & ~umask, "config.json": 0o666 & ~umask, "params.safetensors": 0o666 & ~umask}
