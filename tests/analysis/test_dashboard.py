"""Feature dashboards: statistics, logit effects, the static site, its CLI, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
import torch
from safetensors.torch import save_file

from scope_hub.analysis.activations import text_windows
from scope_hub.analysis.dashboard import (
    collect_from_arrays,
    dashboard_from_harvest,
    dashboard_from_texts,
    dashboard_summary,
    harvest_windows,
    logit_effects,
    nearest_features,
    write_dashboard,
)
from scope_hub.analysis.dashboard.collect import BIN_EDGES
from scope_hub.analysis.prompts import load_prompts
from scope_hub.errors import ConfigError, ShapeMismatchError
from scope_hub.hooks import capture
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import tiny_gemma3, tiny_gpt2, tiny_llama, tiny_tokenizer
from tests.analysis.helpers import CHROMIUM, dump_dom

CORPUS = load_prompts("corpus")[:12]


def _sae(d_sae=24, layer=1, seed=0):
    return make_dictionary(
        make_config("sae", "jumprelu", d_in=64, d_sae=d_sae, site="resid_post", layer=layer), seed=seed
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    scoped = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": _sae()})
    out = tmp_path_factory.mktemp("site")
    return dashboard_from_texts(scoped, "sae", tiny_tokenizer(), CORPUS, out, window=32, top_k=5)


def test_collector_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (7, 9), generator=gen)
    feats = torch.relu(torch.randn(7, 9, 5, generator=gen))
    mask = torch.ones(7, 9, dtype=torch.bool)
    mask[3, 6:] = False
    stats = collect_from_arrays(ids, feats, mask, top_k=3, batch_size=2, before=2, after=1)
    real = feats * mask[..., None]
    assert stats.n_tokens == int(mask.sum())
    torch.testing.assert_close(stats.density, (real > 0).sum((0, 1)).float() / int(mask.sum()))
    torch.testing.assert_close(stats.maximum, real.amax((0, 1)))
    assert torch.equal(stats.histogram.sum(1), (real > 0).sum((0, 1)))
    for f in range(5):
        per_seq = real[..., f].max(1)
        torch.testing.assert_close(stats.top_values[f], per_seq.values.topk(3).values)
        value, tokens, acts, center = stats.contexts(f)[0]
        seq = int(per_seq.values.argmax())
        pos = int(per_seq.indices[seq])
        lo = max(pos - 2, 0)
        assert tokens == ids[seq, lo : pos + 2].tolist() and acts[center] == value
    with pytest.raises(ShapeMismatchError):
        collect_from_arrays(ids, feats[..., :4].unsqueeze(0))
    assert len(BIN_EDGES) == 57


def test_logit_effects_follow_the_final_norm_and_unembedding():
    model, sae = tiny_llama(), _sae(d_sae=6)
    eff = logit_effects(model, sae, k=4)
    expected = (sae.w_dec.detach() * model.model.norm.weight.detach()) @ model.lm_head.weight.detach().T
    torch.testing.assert_close(eff.top_values, expected.topk(4, dim=1).values, rtol=1e-4, atol=1e-5)
    assert torch.equal(eff.bottom_ids, expected.topk(4, dim=1, largest=False).indices)
    gpt = tiny_gpt2()
    eff = logit_effects(gpt, sae, k=2)
    centred = sae.w_dec.detach() - sae.w_dec.detach().mean(-1, keepdim=True)
    expected = (centred * gpt.transformer.ln_f.weight.detach()) @ gpt.lm_head.weight.detach().T
    torch.testing.assert_close(eff.top_values, expected.topk(2, dim=1).values, rtol=1e-4, atol=1e-5)
    gemma = tiny_gemma3()  # attn_out decoders are heads x head_dim wide: mapped through o_proj
    attn = make_dictionary(make_config("sae", "relu", d_in=96, d_sae=4, site="attn_out", layer=0))
    assert logit_effects(gemma, attn, k=3).top_ids.shape == (4, 3)


def test_nearest_features_by_decoder_cosine():
    sae = _sae(d_sae=10)
    with torch.no_grad():
        sae.w_dec[7] = 3 * sae.w_dec[2] + 0.01 * torch.randn(64)
    ids, cos = nearest_features(sae, k=3)
    assert ids[2, 0] == 7 and ids[7, 0] == 2 and cos[2, 0] > 0.99
    assert not (ids == torch.arange(10)[:, None]).any()


def _data(page):
    text = page.read_text()
    match = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', text, re.S)
    return text, json.loads(match.group(1))


def test_site_is_self_contained_and_complete(site):
    text, index = _data(site)
    assert len(index["features"]) == 24 and len(list(site.parent.glob("features/f*.html"))) == 24
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text
    live = next(f for f in index["features"] if f["page"])
    page_text, feature = _data(site.parent / live["page"])
    assert feature["id"] == live["id"] and feature["contexts"] and len(feature["logits_pos"]) == 5
    assert len(feature["neighbors"]) == 5 and feature["histogram"]["counts"]
    assert sum(feature["histogram"]["counts"]) == round(feature["density"] * feature["n_tokens"])
    assert "<style>" in page_text and not re.search(r'src="', page_text)


def test_index_lists_features_by_density_with_dead_ones_last(tmp_path):
    feats = torch.zeros(1, 4, 5)
    feats[0, :, 3] = 1.0  # density 1
    feats[0, :2, 1] = 2.0  # density 0.5
    feats[0, :2, 4] = 3.0  # density 0.5, larger max: before feature 1
    stats = collect_from_arrays(torch.tensor([[104, 105, 106, 107]]), feats)
    index = write_dashboard(tmp_path, stats, tiny_tokenizer(), include_dead=False)
    text, data = _data(index)
    assert [r["id"] for r in data["features"]] == [3, 4, 1, 0, 2]
    assert "3 live / 2 dead features" in text
    assert dashboard_summary(index) == (5, 3, 3, sum(p.stat().st_size for p in tmp_path.rglob("*.html")))


def _write_harvest(root, acts, ids, keep):
    where = keep.nonzero()
    rows = {
        "x": acts[keep][:, None].contiguous(),
        "token_id": ids[keep].int(),
        "sequence": where[:, 0].int(),
        "position": where[:, 1].int(),
    }
    root.mkdir()
    save_file(rows, str(root / "shard_00000.safetensors"))
    meta = {
        "format": "scope-hub-harvest",
        "version": 1,
        "complete": True,
        "storage_dtype": "float32",
        "shards": [{"file": "shard_00000.safetensors", "tokens": len(where), "sequences": [0, len(ids)]}],
    }
    (root / "harvest.json").write_text(json.dumps(meta))
    return meta


def _same_features(a, b):
    for f, g in zip(a["features"], b["features"], strict=True):
        assert (f["id"], f["context"], f["logits"]) == (g["id"], g["context"], g["logits"])
        assert f["density"] == pytest.approx(g["density"]) and f["max"] == pytest.approx(g["max"], rel=1e-5)


def test_harvest_cache_gives_the_same_statistics_as_running_the_model(tmp_path):
    model, sae, tok = tiny_llama(), _sae(), tiny_tokenizer()
    scoped = ScopedModel.from_pretrained(model, dictionaries={"sae": sae})
    ids, mask = text_windows(tok, CORPUS[:6], 24)
    with capture(model, ["model.layers.1.output"]) as acts, torch.no_grad():
        model(ids, attention_mask=mask)
    x = acts["model.layers.1.output"]
    meta = _write_harvest(tmp_path / "harvest", x, ids, mask.bool())  # padding dropped, as trainers do
    _, from_harvest = _data(dashboard_from_harvest(tmp_path / "harvest", sae, tok, tmp_path / "a", model=model))
    _, from_model = _data(
        dashboard_from_texts(scoped, "sae", tok, CORPUS[:6], tmp_path / "b", window=24, exclude_bos=False)
    )
    _same_features(from_harvest, from_model)

    no_bos = mask.bool() & (ids != tok.bos_token_id)  # trainers' data.exclude_bos; dashboards' default
    _write_harvest(tmp_path / "harvest_nobos", x, ids, no_bos)
    windows = list(harvest_windows(tmp_path / "harvest_nobos"))
    assert len(windows) == 1 and not windows[0][2][:, 0].any() and int(windows[0][2].sum()) == int(no_bos.sum())
    _, from_harvest = _data(dashboard_from_harvest(tmp_path / "harvest_nobos", sae, tok, tmp_path / "d", model=model))
    _, from_model = _data(dashboard_from_texts(scoped, "sae", tok, CORPUS[:6], tmp_path / "e", window=24))
    _same_features(from_harvest, from_model)
    (tmp_path / "harvest" / "harvest.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ConfigError):
        dashboard_from_harvest(tmp_path / "harvest", sae, tok, tmp_path / "c")


def test_cli_dashboard_command(tmp_path, capsys):
    from scope_hub.cli import main, register_command

    register_command("dashboard", "feature dashboard", "scope_hub.analysis.cli:setup_dashboard")
    model_dir, sae_dir = tmp_path / "model", tmp_path / "sae"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    _sae(d_sae=8).save_pretrained(sae_dir)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CORPUS[:4]))
    code = main(
        [
            "dashboard",
            str(sae_dir),
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "site"),
            "--texts",
            str(texts),
            "--window",
            "16",
            "--live-only",
        ]
    )
    assert code == 0
    _, index = _data(tmp_path / "site" / "index.html")
    assert len(index["features"]) == 8
    live = sum(f["density"] > 0 for f in index["features"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "site" / "index.html")
    assert out[1].startswith(f"{live} feature pages written; {live} of 8 features live") and " MB in all" in out[1]
    assert (
        main(
            [
                "dashboard",
                str(sae_dir),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "x"),
                "--texts",
                str(tmp_path / "missing.txt"),
            ]
        )
        == 1
    )


def test_cli_dashboard_checks_inputs_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import scope_hub.analysis.cli as cli
    from scope_hub.cli import main, register_command

    def no_model(spec):
        raise AssertionError("the model was loaded before the inputs were checked")

    register_command("dashboard", "feature dashboard", "scope_hub.analysis.cli:setup_dashboard")
    monkeypatch.setattr(cli, "load_model_and_tokenizer", no_model)
    sae_dir, empty = tmp_path / "sae", tmp_path / "empty.jsonl"
    _sae(d_sae=8).save_pretrained(sae_dir)
    empty.write_text("\n")
    registry = f"file://{tmp_path / 'registry'}"
    cases = [  # exit 2: input the user can fix in the command (config errors); 1: a missing thing
        ([str(tmp_path / "x" / "nosuch")], "no such folder", 1),
        (["google/gemma-3-270m:resid_post/layer_6/width_16k/sae"], "is not published", 1),
        ([str(sae_dir), "--texts", str(empty)], "no prompts", 2),
        ([str(sae_dir), "--max-texts", "0"], "leaves no texts", 2),
        ([str(sae_dir), "--harvest", str(tmp_path / "nosuch")], "no such folder", 1),
    ]
    for extra, message, code in cases:
        args = ["dashboard", "--registry", registry, "--model", "m", "--out", str(tmp_path / "o"), *extra]
        assert main(args) == code, (extra, code)
        err = capsys.readouterr().err
        assert message in err and "was loaded" not in err, (extra, err)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); .ci/run installs it"
)
def test_site_renders_and_search_filters_in_headless_chromium(site, tmp_path):
    _, index = _data(site)
    dom = dump_dom(site.as_uri(), tmp_path / "profile")
    rows = re.findall(r'<tr class="feature-row"[^>]*>', dom)
    assert len(rows) == 24 and not any("hidden" in r for r in rows), "JS must build one visible row per feature"
    assert 'data-shown="24"' in dom and "24 of 24 features" in dom
    order = [int(i) for i in re.findall(r'<tr class="feature-row" id="feature-(\d+)"', dom)]
    by_density = sorted(index["features"], key=lambda f: (-f["density"], -f["max"], f["id"]))
    assert order == [f["id"] for f in by_density], "rows must appear densest first, dead last"
    live = sum(f["density"] > 0 for f in index["features"])
    assert f"{live} live / {24 - live} dead features" in dom

    live = next(f for f in index["features"] if f["page"])
    dom = dump_dom(site.as_uri() + f"#q=%23{live['id']}", tmp_path / "profile")
    visible = [r for r in re.findall(r'<tr class="feature-row"[^>]*>', dom) if "hidden" not in r]
    assert visible == [r for r in visible if f'id="feature-{live["id"]}"' in r] and len(visible) == 1
    assert "1 of 24 features" in dom

    term = next(w for w in live["context"].lower().split() if len(w) >= 3)[:3]
    expected = sum(term in (" ".join(f["logits"]) + " " + f["context"]).lower() for f in index["features"])
    dom = dump_dom(site.as_uri() + "#q=" + urllib.parse.quote(term), tmp_path / "profile")
    assert f'data-shown="{expected}"' in dom and expected >= 1
    dom = dump_dom(site.as_uri() + "?q=zzqq-no-such-token", tmp_path / "profile")
    assert 'data-shown="0"' in dom

    page = dump_dom((site.parent / live["page"]).as_uri(), tmp_path / "profile")
    assert f"<h1>Feature {live['id']}</h1>" in page
    assert page.count('class="context"') >= 1 and 'class="tok max"' in page
    assert page.count('<rect class="bar"') >= 1 and 'id="logits-pos"' in page and 'id="neighbors"' in page
