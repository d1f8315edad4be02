"""Hub folders and SAELens names as dictionary sources, against the fake Hub: only the named folder
is fetched, every form equals the folder read locally, and saved configs / lockfiles stay pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scope_hub import load_dictionary
from scope_hub.dictionaries import SAE, Dictionary
from scope_hub.errors import DictionaryNotFoundError, IntegrityError, OfflineError
from scope_hub.interop import saelens
from scope_hub.interop.saelens import save as save_saelens
from scope_hub.metadata import DictionaryConfig
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.tiny_models import D_MODEL, tiny_gemma3
from tests.interop.release_fixtures import gs2_config, gs2_tensors

REPO = "google/gemma-scope-2-270m-pt"
SMALL = "resid_post_all/layer_2_width_16k_l0_small"  # SAELens: gemma-scope-2-270m-pt-res-all / layer_2_...
BIG = "resid_post_all/layer_2_width_16k_l0_big"
TRANSCODER = "transcoder_all/layer_1_width_16k_l0_small"
FOREIGN = "exports/saelens_layer_1"


def _gs2_files(folder: str, config: dict, tensors: dict, tmp: Path) -> dict[str, bytes]:
    path = tmp / folder.replace("/", "__")
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "params.safetensors"))
    return {
        f"{folder}/config.json": json.dumps(config).encode(),
        f"{folder}/params.safetensors": (path / "params.safetensors").read_bytes(),
    }


def _saelens_files(tmp: Path) -> dict[str, bytes]:
    cfg = DictionaryConfig(type="sae", architecture="relu", d_in=D_MODEL, d_sae=32, site="resid_post", layer=1)
    sae = SAE(cfg)
    torch.manual_seed(5)
    for p in sae.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = save_saelens(sae, tmp / "saelens_export")
    return {f"{FOREIGN}/{p.name}": p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture
def gs_repo(fake_hub, monkeypatch, tmp_path):
    """A Gemma Scope 2 style repo (three GS2 folders of two kinds, a SAELens export) in two revisions:
    tag ``v1`` (first) and ``main`` (the small SAE retrained). Returns {"v1": sha, "main": sha}."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    fake_hub.repos.pop(REPO, None)  # the server outlives a test: start from an empty repo
    resid = gs2_config("model.layers.2.output")
    pre, post = "model.layers.1.pre_feedforward_layernorm.output", "model.layers.1.post_feedforward_layernorm.output"
    files = {"README.md": b"# tiny Gemma Scope 2\n"}
    files |= _gs2_files(SMALL, resid, gs2_tensors(1, d_in=D_MODEL, d_out=D_MODEL), tmp_path / "v1")
    files |= _gs2_files(BIG, resid, gs2_tensors(2, d_in=D_MODEL, d_out=D_MODEL), tmp_path / "v1")
    files |= _gs2_files(
        TRANSCODER, gs2_config(pre, post, "transcoder"), gs2_tensors(3, d_in=D_MODEL, d_out=D_MODEL), tmp_path / "v1"
    )
    files |= _saelens_files(tmp_path)
    v1 = fake_hub.commit_files(REPO, files, "first release")
    fake_hub.repos[REPO].tags["v1"] = v1
    main = fake_hub.commit_files(
        REPO, _gs2_files(SMALL, resid, gs2_tensors(11, d_in=D_MODEL, d_out=D_MODEL), tmp_path / "main"), "retrain"
    )
    fake_hub.requests.clear()
    return {"v1": v1, "main": main}


def _local_copy(fake_hub, commit: str, folder: str, dest: Path) -> Path:
    """The folder's files at ``commit``, written straight from the server's state (the local reference)."""
    files = fake_hub.repos[REPO].commits[commit].files
    dest.mkdir(parents=True)
    for path, data in files.items():
        if path.startswith(folder + "/"):
            (dest / path.rsplit("/", 1)[1]).write_bytes(data)
    return dest


def _tensors(d: Dictionary) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in d.state_dict().items()}


def _splice_logits(source, ids: torch.Tensor) -> torch.Tensor:
    scoped = ScopedModel(tiny_gemma3(), base_model_id="tiny")
    (name,) = scoped.attach(source)
    with scoped.splice(name):
        return scoped(ids).logits


FORMS = {
    "sha": lambda shas: (f"hf://{REPO}/{SMALL}@{shas['v1']}", "v1"),
    "tag": lambda shas: (f"hf://{REPO}/{SMALL}@v1", "v1"),
    "saelens-installed": lambda shas: ("saelens://gemma-scope-2-270m-pt-res-all/layer_2_width_16k_l0_small", "main"),
    "saelens-bundled": lambda shas: ("saelens://gemma-scope-2-270m-pt-res-all/layer_2_width_16k_l0_small", "main"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_source_form_fetches_only_its_folder_and_equals_the_local_folder(
    form, gs_repo, fake_hub, tmp_path, monkeypatch
):
    if form == "saelens-bundled":
        monkeypatch.setattr(saelens, "installed_yaml", lambda: None)
    elif form == "saelens-installed" and saelens.installed_yaml() is None:
        pytest.skip("sae-lens is not installed")
    source, revision = FORMS[form](gs_repo)
    fake_hub.requests.clear()
    loaded = load_dictionary(source)
    assert fake_hub.downloaded(REPO) == {f"{SMALL}/config.json", f"{SMALL}/params.safetensors"}
    local = load_dictionary(_local_copy(fake_hub, gs_repo[revision], SMALL, tmp_path / "local"))
    reference, got = _tensors(local), _tensors(loaded)
    assert reference.keys() == got.keys() and all(torch.equal(reference[k], got[k]) for k in reference)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_splice_logits(source, ids), _splice_logits(local, ids))
    assert not torch.equal(_splice_logits(source, ids), tiny_gemma3()(ids).logits)  # the splice did something


def test_foreign_layouts_transcoders_datasets_and_dictionary_from_pretrained(gs_repo, fake_hub, tmp_path):
    foreign = load_dictionary(f"hf://{REPO}/{FOREIGN}")  # a SAELens folder, detected and converted
    reference = saelens.load(_local_copy(fake_hub, gs_repo["main"], FOREIGN, tmp_path / "sl"))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(foreign).values(), _tensors(reference).values()))
    transcoder = Dictionary.from_pretrained(f"hf://{REPO}/{TRANSCODER}@v1")
    assert transcoder.config.type == "transcoder"
    files = fake_hub.repos[REPO].commits[gs_repo["main"]].files
    assert fake_hub.downloaded(REPO) == {p for p in files if p.startswith((f"{FOREIGN}/", f"{TRANSCODER}/"))}
    data_repo = "org/dicts-dataset"
    fake_hub.commit_files(data_repo, {p: b for p, b in files.items() if p.startswith(BIG)}, "copy")
    from_dataset = load_dictionary(f"hf://datasets/{data_repo}/{BIG}")
    assert torch.equal(from_dataset.w_enc, load_dictionary(f"hf://{REPO}/{BIG}").w_enc)
    with pytest.raises(DictionaryNotFoundError):
        load_dictionary(f"hf://{REPO}/resid_post_all/layer_2_width_16k_l0_none")


def test_saved_scoped_model_reloads_the_pinned_bytes_after_main_moves(gs_repo, fake_hub, tmp_path):
    base = tmp_path / "base"
    tiny_gemma3().save_pretrained(base)
    scoped = ScopedModel.from_pretrained(str(base), {"small": f"hf://{REPO}/{SMALL}"})
    before = scoped.dictionaries["small"].w_enc.detach().clone()
    saved = json.loads((scoped.save_pretrained(tmp_path / "scoped") / "scoped_model.json").read_text())
    (entry,) = saved["dictionaries"]
    assert entry["source"] == f"hf://{REPO}/{SMALL}@{gs_repo['main']}"
    moved = fake_hub.commit_files(
        REPO, _gs2_files(SMALL, gs2_config("model.layers.2.output"), gs2_tensors(99, D_MODEL, D_MODEL), tmp_path), "x"
    )
    assert moved != gs_repo["main"]
    assert not torch.equal(load_dictionary(f"hf://{REPO}/{SMALL}").w_enc, before)  # main now differs
    reloaded = ScopedModel.from_pretrained(str(tmp_path / "scoped"))
    assert torch.equal(reloaded.dictionaries["small"].w_enc.detach(), before)


def test_offline_reads_the_hf_cache_and_names_what_is_missing(gs_repo, fake_hub, monkeypatch):
    online = load_dictionary(f"hf://{REPO}/{SMALL}@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    assert torch.equal(load_dictionary(f"hf://{REPO}/{SMALL}@v1").w_enc, online.w_enc)
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        load_dictionary(f"hf://{REPO}/{BIG}@v1")


def test_a_tampered_cache_is_caught_on_reload(gs_repo, fake_hub, tmp_path):
    base = tmp_path / "base"
    tiny_gemma3().save_pretrained(base)
    scoped = ScopedModel.from_pretrained(str(base), [f"hf://{REPO}/{SMALL}@v1"])
    scoped.save_pretrained(tmp_path / "scoped")
    snapshot = next((tmp_path / "hf-cache").rglob(f"snapshots/{gs_repo['v1']}/{SMALL}/config.json"))
    blob = snapshot.resolve()
    blob.write_text(blob.read_text().replace('"l0": 17', '"l0": 18'))
    with pytest.raises(IntegrityError, match="pinned"):
        ScopedModel.from_pretrained(str(tmp_path / "scoped"))


def test_a_lockfile_pins_hub_sources_in_python_and_on_the_cli(gs_repo, fake_hub, tmp_path, capsys):
    from scope_hub.cli import main

    lock = tmp_path / "scope.lock"
    name = "saelens://gemma-scope-2-270m-pt-res-all/layer_2_width_16k_l0_small"
    assert main(["lock", f"hf://{REPO}/{BIG}@main", name, "--out", str(lock)]) == 0
    entries = {e["source"]: e for e in json.loads(lock.read_text())["entries"]}
    assert entries[name]["resolved"] == f"hf://{REPO}/{SMALL}@{gs_repo['main']}"
    before = load_dictionary(name).w_enc
    fake_hub.commit_files(
        REPO, _gs2_files(SMALL, gs2_config("model.layers.2.output"), gs2_tensors(77, D_MODEL, D_MODEL), tmp_path), "x"
    )
    assert not torch.equal(load_dictionary(name).w_enc, before)  # unlocked: main moved
    assert torch.equal(load_dictionary(name, lock=lock).w_enc, before)
    assert main(["pull", f"hf://{REPO}/{SMALL}", "--lock", str(lock)]) == 1  # locked only under its SAELens name
    assert main(["pull", name, "--lock", str(lock), "--to", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().endswith("out")
    assert torch.equal(load_dictionary(tmp_path / "out").w_enc, before)
    cached = next((tmp_path / "hf-cache").rglob(f"snapshots/{gs_repo['main']}/{SMALL}/params.safetensors")).resolve()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 1  # one flipped bit in the cached weights
    cached.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="pinned"):
        load_dictionary(name, lock=lock)


def test_push_takes_any_folder_load_dictionary_accepts(gs_repo, fake_hub, tmp_path, capsys):
    import hashlib

    from scope_hub.cards import parse_card
    from scope_hub.cli import main
    from scope_hub.registry import Registry

    registry = (tmp_path / "reg").as_uri()
    key = "google/gemma-3-270m:resid_post/layer_2/width_32/sae/l0_small"
    source = f"hf://{REPO}/{SMALL}@v1"
    assert main(["--registry", registry, "push", source, key]) == 0  # Gemma Scope: cc-by-4.0 by default
    assert capsys.readouterr().out.startswith(f"pushed {key}@v1")
    pulled = Registry(registry).pull(key)
    front = parse_card((pulled / "README.md").read_text())[0]
    served = fake_hub.repos[REPO].commits[gs_repo["v1"]].files
    assert front["license"] == "cc-by-4.0" and front["base_model"] == "google/gemma-3-270m"
    assert front["scope_hub"]["source_format"] == "gemma-scope-2"
    assert front["scope_hub"]["source_uri"] == f"hf://{REPO}/{SMALL}@{gs_repo['v1']}"
    assert front["scope_hub"]["source_files"] == {
        p.rsplit("/", 1)[1]: hashlib.sha256(b).hexdigest() for p, b in served.items() if p.startswith(SMALL + "/")
    }
    assert torch.equal(load_dictionary(pulled).w_enc, load_dictionary(source).w_enc)
    assert main(["--registry", registry, "push", source, key]) == 0
    assert capsys.readouterr().out.startswith(f"unchanged, v1: {key}@v1")
    foreign = _local_copy(fake_hub, gs_repo["main"], FOREIGN, tmp_path / "saelens_layer_1")
    other = "tiny:resid_post/layer_1/width_32/sae"
    assert main(["--registry", registry, "push", str(foreign), other]) == 1  # no license stated anywhere
    assert "--license" in capsys.readouterr().err
    assert main(["--registry", registry, "push", str(foreign), other, "--license", "mit"]) == 0
    front = parse_card((Registry(registry).pull(other) / "README.md").read_text())[0]
    assert front["scope_hub"]["source_format"] == "saelens" and front["scope_hub"]["source_uri"] == "saelens_layer_1"
