"""A push is refused when its key contradicts the folder's config.json in any field (not only the type)."""

from __future__ import annotations

import pytest

from scope_hub.cli import main
from scope_hub.errors import ConfigError
from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig
from scope_hub.registry import Registry
from scope_hub.registry.key_check import check_key_matches, key_mismatches

from .helpers import make_dictionary

GOOD = "google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small"
SAE = DictionaryConfig(
    type="sae", architecture="jumprelu", d_in=640, d_sae=16384, model="google/gemma-3-270m", site="resid_post", layer=12
)


@pytest.mark.parametrize(
    "key,field,values",
    [  # the new-user walkthrough: each of these used to be published
        ("google/gemma-3-270m:resid_post/layer_6/width_16k/sae", "layer", ("6", "12")),
        ("google/gemma-3-270m:mlp_out/layer_12/width_16k/sae", "site", ("mlp_out", "resid_post")),
        ("google/gemma-2-2b:resid_post/layer_12/width_16k/sae", "model", ("google/gemma-2-2b", "google/gemma-3-270m")),
        ("google/gemma-3-270m:resid_post/layer_12/width_1k/sae", "width", ("1k", "d_sae 16384 (width_16k)")),
        ("google/gemma-3-270m:resid_post/layer_12/width_16k/transcoder", "type", ("transcoder", "sae")),
    ],
)
def test_each_contradicting_field_is_named_with_both_values_and_the_fix(key, field, values):
    with pytest.raises(ConfigError) as caught:
        check_key_matches(SAE, parse_key(key), "'my_sae/config.json'")
    message = str(caught.value)
    assert f"{field}: the key says {values[0]}, config.json says {values[1]}" in message
    assert message.count("the key says") == 1  # only the wrong field
    assert f"push it as {parse_key(GOOD.rsplit('/', 1)[0])}" in message and "edit config.json" in message


def _tc(**fields) -> DictionaryConfig:
    base = dict(
        type="transcoder",
        architecture="jumprelu",
        d_in=640,
        d_sae=16384,
        model="google/gemma-3-270m",
        site="mlp_in",
        site_out="mlp_out",
        layer=9,
    )
    return DictionaryConfig(**{**base, **fields})


@pytest.mark.parametrize(
    "config,key",
    [
        (SAE, GOOD),
        (SAE, "google/gemma-3-270m:resid_post/layer_12/width_16384/sae"),  # the exact d_sae
        (_tc(), "google/gemma-3-270m:mlp/layer_9/width_16k/transcoder/l0_small"),  # mlp = mlp_in -> mlp_out
        (_tc(), "google/gemma-3-270m:mlp_in/layer_9/width_16k/transcoder"),
        (
            _tc(type="clt", layer=None, layers=list(range(18)), d_sae=2048, width_label="262k", affine_skip=True),
            "google/gemma-3-270m:mlp/layer_all/width_262k/clt/l0_medium_affine",
        ),  # the published label wins
        (
            _tc(
                type="crosscoder",
                site="resid_post",
                site_out=None,
                layer=None,
                layers=[5, 9, 12, 15],
                d_out=640,
                d_sae=65536,
            ),
            "google/gemma-3-270m:resid_post/layer_5-9-12-15/width_65k/crosscoder/l0_medium",
        ),
        (SAE.model_copy(update={"model": "/data/models/gemma-3-270m"}), GOOD),  # trained on a local copy
        (DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8), "m:resid_post/layer_1/width_8/sae"),
    ],
)
def test_keys_that_agree_with_their_config_are_accepted(config, key):
    assert key_mismatches(config, parse_key(key)) == []


@pytest.mark.parametrize(
    "config,key,field",
    [
        (_tc(), "google/gemma-3-270m:mlp_out/layer_9/width_16k/transcoder", "site"),  # it reads mlp_in
        (SAE.model_copy(update={"site": "mlp_in"}), "google/gemma-3-270m:mlp/layer_12/width_16k/sae", "site"),
        (
            _tc(type="crosscoder", site="resid_post", site_out=None, layer=None, layers=[5, 9], d_out=640),
            "google/gemma-3-270m:resid_post/layer_5-12/width_16k/crosscoder",
            "layer",
        ),
        (SAE, "google/gemma-3-270m:resid_post/layer_all/width_16k/sae", "layer"),
    ],
)
def test_multi_layer_and_mlp_keys_are_still_checked(config, key, field):
    assert [m.split(":")[0] for m in key_mismatches(config, parse_key(key))] == [field]


def test_cli_push_with_a_wrong_layer_publishes_nothing(tmp_path, capsys):
    url = (tmp_path / "registry").as_uri()
    folder = make_dictionary(tmp_path / "my_sae", seed=1)  # layer 6
    wrong = "google/gemma-3-270m:resid_post/layer_12/width_8/sae"
    assert main(["--registry", url, "push", str(folder), wrong]) == 2
    err = capsys.readouterr().err
    assert "layer: the key says 12, config.json says 6" in err and len(err.strip().splitlines()) == 1
    assert Registry(url).list() == []
