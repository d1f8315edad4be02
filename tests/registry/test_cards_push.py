"""Cards at push: rendered per version from config.json + the card source, validated, content-addressed
by the *source*, always naming their own version (even when pushers race), on every backend."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from huggingface_hub import ModelCard
from safetensors.numpy import save_file

from scope_hub.cards import CardSource, compose_card, parse_card
from scope_hub.errors import CardError, ConfigError, ShapeMismatchError
from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig
from scope_hub.registry import Registry
from scope_hub.registry.content import content_digest, sha256_file

from .helpers import CARD, KEY, LICENSE, folder_bytes, make_dictionary, race_pushes

SOURCE = f"""---
license: {LICENSE}
tags: [refusal, sae]
datasets: [stdlib-docstrings]
language: [en]
---
# Refusal SAE

Trained for the refusal study. Feature 17 fires on "I can't".
"""


def _card(folder) -> str:
    return (folder / CARD).read_text()


def _nothing_written(harness, reg: Registry) -> None:
    if harness.kind == "hf":
        from scope_hub.errors import RegistryError

        with pytest.raises(RegistryError, match="not found"):  # not even the repo was created
            reg.list()
    else:
        assert reg.backend.store.walk("") == []


def test_card_is_rendered_for_its_version_and_round_trips(harness, tmp_path):
    src = make_dictionary(tmp_path / "d", seed=1, license=None, card=SOURCE)
    reg = harness.registry()
    assert reg.push(src, KEY).version == 1
    pulled = harness.registry(fresh_cache=True).pull(KEY)
    text = _card(pulled)
    front, body = parse_card(text)
    # Hugging Face model-card front matter + our block
    assert front["license"] == LICENSE and front["base_model"] == "google/gemma-3-270m"
    assert front["library_name"] == "scope-hub" and front["datasets"] == ["stdlib-docstrings"]
    assert {"refusal", "sae", "jumprelu", "sparse-autoencoder", "interpretability"} <= set(front["tags"])
    assert front["scope_hub"]["key"] == f"{KEY}@v1" and front["scope_hub"]["d_sae"] == 8
    # body: the author's text, a metrics table, a loading snippet pinned to v1 in this registry
    assert "Feature 17 fires" in body and "## Metrics" in body
    assert f"load_dictionary('{KEY}@v1', registry='{reg.url}')" in body
    assert f"scope-hub pull {KEY}@v1 --registry {reg.url}" in body
    # lossless: our parser and huggingface_hub's agree, and re-composing gives the same bytes
    assert compose_card(front, body) == text and ModelCard(text).data.to_dict() == front
    # the stored card is the card source's rendering: same author parts
    config = DictionaryConfig.model_validate_json((src / "config.json").read_text())
    assert CardSource.parse(text, config, parse_key(KEY)) == CardSource.parse(SOURCE, config, parse_key(KEY))
    assert reg.card(KEY) == text == reg.card(f"{KEY}@v1")


def test_a_card_without_license_is_refused_before_anything_is_written(harness, tmp_path):
    reg = harness.registry()
    bare = make_dictionary(tmp_path / "bare", seed=1, license=None)  # no README.md at all
    with pytest.raises(CardError, match="lacks license.*--license"):
        reg.push(bare, KEY)
    unlicensed = make_dictionary(tmp_path / "text", seed=1, license=None, card="# no front matter")
    with pytest.raises(CardError, match="lacks license"):
        reg.push(unlicensed, KEY)
    with pytest.raises(CardError, match="says license 'apache-2.0' but 'mit'"):  # ambiguous: refused
        reg.push(make_dictionary(tmp_path / "both", seed=1), KEY, license="mit")
    _nothing_written(harness, reg)
    assert reg.push(bare, KEY, license="mit").version == 1  # --license fills a missing license
    assert parse_card(reg.card(KEY))[0]["license"] == "mit"


def test_identical_source_is_a_noop_and_a_changed_source_a_new_version(store_harness, tmp_path):
    reg = store_harness.registry()
    src = make_dictionary(tmp_path / "d", seed=1, license=None, card=SOURCE)
    first = reg.push(src, KEY)
    assert reg.push(src, KEY).created is False
    (src / CARD).write_text(SOURCE + "\n\n")  # whitespace only: the rendered card would be the same
    assert reg.push(src, KEY).created is False
    (src / CARD).write_text(SOURCE.replace("Feature 17", "Feature 18"))
    second = reg.push(src, KEY)
    assert (second.version, second.created) == (2, True)
    assert second.content_sha256 != first.content_sha256
    assert "Feature 18" in reg.card(KEY) and f"{KEY}@v2" in reg.card(KEY)
    # the documented rule: non-card files by their sha256, the card by its source's digest
    config = DictionaryConfig.model_validate_json((src / "config.json").read_text())
    digest = CardSource.parse((src / CARD).read_text(), config, parse_key(KEY)).digest
    pairs = [(n, sha256_file(src / n)[0]) for n in ("config.json", "params.safetensors")] + [(CARD, digest)]
    assert second.content_sha256 == content_digest(pairs)
    manifest = reg.resolve(KEY)
    assert manifest.card_source_sha256 == digest
    assert next(f.sha256 for f in manifest.files if f.path == CARD) != digest  # the stored card is the rendering
    # another license is another card: a new version, same weights
    assert reg.push(make_dictionary(tmp_path / "d2", seed=1, license=None), KEY, license="mit").version == 3


def test_a_pulled_folder_pushed_again_is_the_same_content(tmp_path):
    one = Registry((tmp_path / "one").as_uri(), progress=False)
    two = Registry("memory://cards-mirror-" + tmp_path.name, progress=False)
    src = make_dictionary(tmp_path / "d", seed=1, license=None, card=SOURCE)
    pushed = one.push(src, KEY)
    pulled = one.pull(KEY, to=tmp_path / "copy")  # README.md is now the rendered v1 card
    assert one.push(pulled, KEY).created is False  # same registry: a no-op
    mirrored = two.push(pulled, KEY)  # another registry: same content hash, card re-rendered for it
    assert mirrored.content_sha256 == pushed.content_sha256
    assert f"registry='{two.url}'" in two.card(KEY) and "Feature 17 fires" in two.card(KEY)


def test_the_stored_card_names_its_own_version_when_the_claim_is_lost(harness, tmp_path):
    """One pusher loses vN to another between rendering and claiming: it re-renders for vN+1."""
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "v1", seed=1, card="first"), KEY)
    rival = make_dictionary(tmp_path / "rival", seed=2, card="rival")
    mine = make_dictionary(tmp_path / "mine", seed=3, card="mine")
    pushed = []

    def rival_pushes_first() -> None:  # runs inside our push, after our card for v2 was rendered
        if not pushed:
            pushed.append(harness.registry().push(rival, KEY).version)

    if harness.kind == "hf":
        client = reg.backend.client
        real = client.commit
        client.commit = lambda *a, **k: (rival_pushes_first(), real(*a, **k))[1]
    else:
        store = reg.backend.store
        real = store.create_bytes
        store.create_bytes = lambda path, data: (rival_pushes_first(), real(path, data))[1]
    assert reg.push(mine, KEY).version == 3 and pushed == [2]
    fresh = harness.registry(fresh_cache=True)
    for version, word in [(1, "first"), (2, "rival"), (3, "mine")]:
        card = fresh.card(f"{KEY}@v{version}")
        assert parse_card(card)[0]["scope_hub"]["key"] == f"{KEY}@v{version}", card
        assert word in card and f"{KEY}@v{version}'" in card
        assert fresh.verify().ok


def test_racing_processes_each_store_a_card_naming_their_version(tmp_path):
    url = (tmp_path / "registry").as_uri()
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i, card=f"pusher {i}") for i in range(4)]
    outputs = race_pushes(url, [(f, KEY) for f in folders], "before_manifest", tmp_path)
    versions = [int(re.search(r"@v(\d+) ", out).group(1)) for out in outputs]
    assert sorted(versions) == [1, 2, 3, 4]  # three of them lost v1 after rendering a v1 card
    reg = Registry(url, progress=False)
    for i, version in enumerate(versions):
        card = reg.card(f"{KEY}@v{version}")
        assert parse_card(card)[0]["scope_hub"]["key"] == f"{KEY}@v{version}" and f"pusher {i}" in card
        assert folder_bytes(reg.pull(f"{KEY}@v{version}")) == folder_bytes(folders[i])
    assert reg.verify().ok


def test_hf_racing_threads_each_commit_a_card_naming_their_version(tmp_path, hf_repo, fake_hub):
    url = f"hf://{hf_repo}"
    Registry(url, progress=False).push(make_dictionary(tmp_path / "d0", seed=0), KEY)
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i, card=f"pusher {i}") for i in (1, 2, 3)]
    results, barrier = {}, threading.Barrier(3)

    def push(i, folder):
        barrier.wait()
        results[i] = Registry(url, progress=False).push(folder, KEY).version

    threads = [threading.Thread(target=push, args=(i, f)) for i, f in zip((1, 2, 3), folders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [2, 3, 4]
    repo = fake_hub.repos[hf_repo]
    for i, version in results.items():
        commit = repo.commits[repo.tags[f"{parse_key(KEY).path.replace('/', '__')}__v{version}"]]
        card = commit.files[f"{parse_key(KEY).path}/README.md"].decode()  # the tagged commit's card
        assert parse_card(card)[0]["scope_hub"]["key"] == f"{KEY}@v{version}" and f"pusher {i}" in card


def _write_params(folder, **tensors):
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, str(folder / "params.safetensors"))


def test_metadata_that_disagrees_with_the_tensors_is_refused(harness, tmp_path):
    reg = harness.registry()
    wide = make_dictionary(tmp_path / "wide", seed=1)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "d_sae": 16}))  # the tensors have 8 latents
    with pytest.raises(ShapeMismatchError, match="w_enc.*shape \\[4, 8\\].*implies \\[4, 16\\]"):
        reg.push(wide, KEY)
    half = make_dictionary(tmp_path / "half", seed=1)
    (half / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    with pytest.raises(ShapeMismatchError, match="float32 but config.json says dtype float16"):
        reg.push(half, KEY)
    missing = make_dictionary(tmp_path / "missing", seed=1)
    z = np.zeros
    _write_params(missing, w_enc=z((4, 8)), b_enc=z(8), w_dec=z((8, 4)), b_dec=z(4))  # no threshold
    with pytest.raises(ShapeMismatchError, match="'threshold' is missing"):
        reg.push(missing, KEY)
    _nothing_written(harness, reg)


def test_foreign_folders_are_refused_with_a_hint(store_harness, tmp_path):
    reg = store_harness.registry()
    gs2 = make_dictionary(tmp_path / "gs2", seed=1)
    (gs2 / "config.json").write_text(
        json.dumps(
            {  # Gemma Scope 2's config.json as published
                "hf_hook_point_in": "model.layers.6.output",
                "hf_hook_point_out": "model.layers.6.output",
                "width": 8,
                "model_name": "gemma-v3-270m-pt",
                "architecture": "jump_relu",
                "l0": 10,
                "type": "sae",
            }
        )
    )
    with pytest.raises(ConfigError, match="Gemma Scope 2 config.json.*scope-hub convert.*scope-hub import"):
        reg.push(gs2, KEY)
    saelens = tmp_path / "saelens"
    saelens.mkdir()
    (saelens / "cfg.json").write_text("{}")
    with pytest.raises(ConfigError, match="no config.json.*scope-hub convert"):
        reg.push(saelens, KEY)
    assert reg.backend.store.walk("") == []


def test_base_model_is_a_hub_id_never_a_local_path(tmp_path):
    reg = Registry("memory://base-model-paths", cache_dir=tmp_path / "c")
    folder = make_dictionary(tmp_path / "d", seed=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "my-models" / "gemma")}))
    reg.push(folder, KEY)  # config.json names this machine's folder: the card names the key's Hub id
    front = parse_card(reg.card(KEY))[0]
    assert front["base_model"] == "google/gemma-3-270m" and str(tmp_path) not in json.dumps(front["scope_hub"])
    (folder / CARD).write_text(f"---\nlicense: mit\nbase_model: {tmp_path}/my-models/gemma\n---\nMine.\n")
    with pytest.raises(CardError, match="is a local path; state the Hub id"):
        reg.push(folder, KEY)
