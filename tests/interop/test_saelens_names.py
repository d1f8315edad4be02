"""SAELens release names -> scope-hub keys, from the installed sae_lens YAML and from our vendored copy."""

from __future__ import annotations

import pytest

from scope_hub.errors import UnknownReleaseError
from scope_hub.interop import saelens
from scope_hub.interop.saelens import key_for, release_table

M = "google/gemma-3-270m"
REAL_ENTRIES = [  # (release, sae_id, key) as listed by sae_lens 6.54.12's pretrained_saes.yaml
    ("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small", f"{M}:resid_post/layer_12/width_16k/sae/l0_small"),
    ("gemma-scope-2-270m-pt-res", "layer_12_width_1m_l0_medium", f"{M}:resid_post/layer_12/width_1m/sae/l0_medium"),
    (
        "gemma-scope-2-270m-pt-transcoders",
        "transcoder/layer_15_width_262k_l0_big_affine",
        f"{M}:mlp/layer_15/width_262k/skip_transcoder/l0_big_affine",
    ),
    (
        "gemma-scope-2-270m-pt-transcoders-all",
        "layer_0_width_16k_l0_small",
        f"{M}:mlp/layer_0/width_16k/transcoder/l0_small",
    ),
    ("gemma-scope-2-270m-pt-mlp-all", "layer_0_width_16k_l0_big", f"{M}:mlp_out/layer_0/width_16k/sae/l0_big"),
    ("gemma-scope-2-270m-pt-mlp-all", "layer_12_width_16k_l0_big", f"{M}:mlp_out/layer_12/width_16k/sae/l0_big_all"),
    ("gemma-scope-2-270m-pt-att", "layer_12_width_16k_l0_small", f"{M}:attn_out/layer_12/width_16k/sae/l0_small"),
    (
        "gemma-scope-2-1b-it-res",
        "layer_13_width_262k_l0_medium_seed_1",
        "google/gemma-3-1b-it:resid_post/layer_13/width_262k/sae/l0_medium_seed_1",
    ),
    (
        "gemma-scope-2b-pt-res-canonical",
        "layer_0/width_16k/canonical",
        "google/gemma-2-2b:resid_post/layer_0/width_16k/sae/average_l0_105",
    ),
    (
        "gemma-scope-2b-pt-transcoders",
        "layer_0/width_16k/average_l0_76",
        "google/gemma-2-2b:mlp/layer_0/width_16k/transcoder/average_l0_76",
    ),
]


@pytest.fixture(params=["installed", "vendored"])
def table_source(request, monkeypatch):
    if request.param == "installed":
        if saelens.installed_yaml() is None:
            pytest.skip("sae_lens is not installed")
    else:
        monkeypatch.setattr(saelens, "installed_yaml", lambda: None)
    return request.param


@pytest.mark.parametrize(("release", "sae_id", "key"), REAL_ENTRIES)
def test_real_release_entries_map_to_keys(table_source, release, sae_id, key):
    assert str(key_for(release, sae_id)) == key


def test_vendored_table_matches_the_installed_yaml(monkeypatch):
    path = saelens.installed_yaml()
    if path is None:
        pytest.skip("sae_lens is not installed")
    installed = release_table(str(path))
    monkeypatch.setattr(saelens, "installed_yaml", lambda: None)
    vendored = release_table(None)
    assert vendored is not installed and vendored == installed
    assert sum(len(v["saes"]) for v in vendored.values()) > 10_000
    from importlib.metadata import version

    assert saelens.vendored_version() == version("sae-lens")  # the table states the release it came from


def test_unknown_names_say_what_exists(table_source):
    with pytest.raises(KeyError, match="unknown SAELens release 'gemma-scope-2-270m-pt-rez'.*similar"):
        key_for("gemma-scope-2-270m-pt-rez", "layer_12_width_16k_l0_small")
    with pytest.raises(UnknownReleaseError, match="not in release"):
        key_for("gemma-scope-2-270m-pt-res", "layer_99_width_16k_l0_small")


def test_non_gemma_scope_releases_are_refused(tmp_path):
    yaml_file = tmp_path / "pretrained_saes.yaml"
    yaml_file.write_text(
        "gpt2-small-res-jb:\n  repo_id: jbloom/GPT2-Small-SAEs-Reformatted\n  model: gpt2-small\n"
        "  saes:\n  - id: blocks.0.hook_resid_pre\n    path: blocks.0.hook_resid_pre\n"
    )
    assert release_table(str(yaml_file)) == {}  # only Gemma Scope repos map to keys
