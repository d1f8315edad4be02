"""The reusable round-trip suite: ours -> theirs -> ours for every format and kind it holds."""

from __future__ import annotations

import warnings

import pytest
import torch

from scope_hub.errors import UnsupportedError
from scope_hub.interop.formats import FORMATS, convert, detect_format, get_format, load_all
from scope_hub.metadata import Normalization
from scope_hub.testing.dictionaries import make_config, make_dictionary
from tests.interop.cases import CASES, UNSUPPORTED, Case, inputs


def _described(module, **extra):
    """Give the dictionary every descriptive field, so config preservation is really tested."""
    c = module.config
    single = c.type not in ("clt", "crosscoder")
    fields = dict(
        model="google/gemma-3-270m",
        variant="l0_small",
        width_label="16",
        l0_target=12.5,
        provenance=c.provenance.model_copy(update={"source": "trained", "seed": 3}),
        metrics=c.metrics.model_copy(update={"fvu": 0.25, "l0": 11.0}),
        **extra,
    )
    if single:
        site = "resid_post" if c.type == "sae" else "mlp_in"
        fields.update(
            layer=6,
            site=site,
            site_out=None if c.type == "sae" else "mlp_out",
            hook_point_in="model.layers.6.output"
            if c.type == "sae"
            else "model.layers.6.pre_feedforward_layernorm.output",
        )
    module.config = c.model_copy(update=fields)
    return module


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_ours_theirs_ours_is_exact(tmp_path, case: Case):
    module = _described(case.make())
    fmt = get_format(case.fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact export must not need to warn
        fmt.save(module, tmp_path / "out")
        back = fmt.load(tmp_path / "out").eval()
    assert detect_format(tmp_path / "out") == case.fmt
    assert type(back) is type(module)
    assert back.config == module.config, "config must survive the round trip"
    for (name, ours), (_, theirs) in zip(module.state_dict().items(), back.state_dict().items()):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
        if name.rsplit(".", 1)[-1] in case.folded:
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(ours, theirs), f"{name} changed"
    x = inputs(module)
    torch.testing.assert_close(back.encode(x), module.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["scope-hub", "gemma-scope-2", "saelens", "sparsify", "circuit-tracer"])
def test_bfloat16_round_trip_keeps_dtype_and_bits(tmp_path, fmt):
    case = next(c for c in CASES if c.fmt == fmt and not c.folded)
    module = case.make(dtype=torch.bfloat16)
    get_format(fmt).save(module, tmp_path / "out")
    back = get_format(fmt).load(tmp_path / "out").eval()
    assert back.config.dtype == "bfloat16"
    for ours, theirs in zip(module.state_dict().values(), back.state_dict().values()):
        assert theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)


@pytest.mark.parametrize(("fmt", "type_", "arch", "extra", "words"), UNSUPPORTED)
def test_what_a_format_cannot_hold_is_refused_clearly(tmp_path, fmt, type_, arch, extra, words):
    module = make_dictionary(make_config(type_, arch, **extra))
    with pytest.raises(UnsupportedError, match=words) as info:
        get_format(fmt).save(module, tmp_path / "out")
    assert "scope-hub format" in str(info.value) or "d_out" in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing is written when the export is refused"


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "gemma-scope-2", "dictionary-learning", "circuit-tracer"])
def test_normalization_is_folded_into_the_weights(tmp_path, fmt):
    case = next(c for c in CASES if c.fmt == fmt)
    module = case.make()
    scale = Normalization(kind="constant_scale", scale_in=0.5, scale_out=0.25)
    module.config = module.config.model_copy(update={"normalization": scale})
    get_format(fmt).save(module, tmp_path / "out")
    back = get_format(fmt).load(tmp_path / "out").eval()
    assert back.config.normalization.kind == "none"
    x = inputs(module)
    torch.testing.assert_close(back.encode(x), module.encode(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(back(x), module(x), rtol=1e-4, atol=1e-4)


def test_a_folder_of_dictionaries_converts_folder_by_folder(tmp_path):
    for i, arch in enumerate(["jumprelu", "relu"]):
        make_dictionary(make_config("sae", arch), seed=i).save_pretrained(tmp_path / "src" / f"d{i}")
    written = convert(tmp_path / "src", tmp_path / "out", to="saelens")
    assert sorted(p.name for p in written) == ["d0", "d1"]
    assert detect_format(tmp_path / "out") == "saelens"
    back = load_all("saelens", tmp_path / "out")
    assert sorted(back) == ["d0", "d1"] and back["d1"].config.architecture == "relu"


def test_a_transcoder_set_becomes_one_folder_per_layer(tmp_path):
    layers = {
        f"l{i}": make_dictionary(make_config("transcoder", "jumprelu", d_out=6, layer=i), seed=i) for i in range(3)
    }
    get_format("circuit-tracer").save_all(layers, tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
        "layer_2.safetensors",
    ]
    convert(tmp_path / "set", tmp_path / "ours", to="scope-hub")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["layer_0", "layer_1", "layer_2"]
    again = load_all("scope-hub", tmp_path / "ours")
    for i in range(3):
        assert torch.equal(again[f"layer_{i}"].w_enc, layers[f"l{i}"].w_enc)


def test_convert_refuses_to_overwrite_and_unknown_formats(tmp_path):
    make_dictionary(make_config("sae", "relu")).save_pretrained(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        convert(tmp_path / "src", tmp_path / "out", to="saelens")
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        convert(tmp_path / "src", tmp_path / "x", to="onnx")
    convert(tmp_path / "src", tmp_path / "out", to="saelens", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and detect_format(tmp_path / "out") == "saelens"


def test_every_format_is_in_the_matrix():
    assert {c.fmt for c in CASES} == set(FORMATS)
