"""A key that is not published names the published keys it is closest to; width labels ignore case."""

from __future__ import annotations

import pytest

from scope_hub.cli import main
from scope_hub.errors import UnknownKeyError
from scope_hub.keys import parse_key
from scope_hub.registry import Registry

from .helpers import make_dictionary

SMALL = "google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small"
MINE = "google/gemma-3-270m:resid_post/layer_6/width_16k/sae/mine"


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("near")
    registry = Registry((root / "registry").as_uri(), cache_dir=root / "cache")
    for i, key in enumerate((SMALL, MINE)):
        registry.push(make_dictionary(root / f"d{i}", seed=i, d_sae=16384, key=key), key)
    return registry.url


@pytest.mark.parametrize(
    ("asked", "named"),
    [
        ("google/gemma-3-270m:resid_post/layer_12/width_16k/sae", SMALL),  # variant left out
        ("google/gemma-3-270m:resid_post/layer_6/width_16k/sae/mien", MINE),  # typo
    ],
)
def test_a_near_miss_lists_the_close_keys_that_exist(url, asked, named, capsys, tmp_path):
    assert main(["--registry", url, "pull", asked]) == 1
    err = capsys.readouterr().err
    assert "is not published" in err and f"close keys that exist: {named}" in err, err
    with pytest.raises(UnknownKeyError, match=f"close keys that exist: {named}"):
        Registry(url, cache_dir=tmp_path).resolve(asked)


def test_a_key_far_from_everything_points_to_ls(url, tmp_path):
    with pytest.raises(UnknownKeyError, match="see `scope-hub ls`"):
        Registry(url, cache_dir=tmp_path).resolve("other/model:attn_out/layer_3/width_65k/transcoder")


def test_width_labels_are_case_insensitive(url, capsys):
    assert str(parse_key(SMALL.replace("16k", "16K"))) == SMALL
    assert parse_key("m:resid_post/layer_1/width_1M/sae").width == "1m"
    assert main(["--registry", url, "pull", SMALL.replace("16k", "16K") + "@v1"]) == 0
    assert capsys.readouterr().out.strip().endswith("v1")
