"""Cards: front matter round trips losslessly, required fields are enforced, release cards re-parse."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from scope_hub.cards import ReleaseCard, ReleaseEntry, compose_card, parse_card, render_dictionary_card, validate_card
from scope_hub.errors import CardError
from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig

KEY = parse_key("google/gemma-3-270m:mlp/layer_6/width_16k/transcoder/l0_small")


def _config(**extra):
    return DictionaryConfig(
        type="transcoder",
        architecture="topk",
        k=32,
        d_in=640,
        d_sae=16384,
        model="google/gemma-3-270m",
        site="mlp_in",
        site_out="mlp_out",
        layer=6,
        metrics={"l0": 32.0, "fvu": 0.1234, "dead_fraction": 0.01},
        provenance={"source": "trained", "dataset": "stdlib-docstrings", "dataset_sha256": "ab" * 32, "seed": 0},
        **extra,
    )


def test_dictionary_card_front_matter_round_trips_and_keeps_author_text():
    author = "---\nlicense: cc-by-4.0\ntags: [mine]\n---\nTrained for the refusal study.\n"
    text = render_dictionary_card(_config(), KEY, version=2, text=author, registry_url="file:///tmp/reg")
    front, body = parse_card(text)
    assert front["license"] == "cc-by-4.0" and front["base_model"] == "google/gemma-3-270m"
    assert front["library_name"] == "scope-hub" and "mine" in front["tags"] and "transcoder" in front["tags"]
    sh = front["scope_hub"]
    assert sh["key"] == f"{KEY}@v2" and sh["metrics"]["fvu"] == 0.1234 and sh["training_data"]["sha256"] == "ab" * 32
    assert "Trained for the refusal study." in body and "| FVU | 0.1234 |" in body
    assert f"load_dictionary('{KEY}@v2', registry='file:///tmp/reg')" in body
    # Lossless: re-composing the parsed parts gives the same card, and huggingface_hub reads it too.
    assert compose_card(front, body) == text
    assert ModelCard(text).data.to_dict() == front


def test_required_fields_are_enforced():
    text = render_dictionary_card(_config(), KEY, version=1)  # no license given anywhere
    front, _ = parse_card(text)
    with pytest.raises(CardError, match="lacks license"):
        validate_card(front, "README.md")
    validate_card(parse_card(render_dictionary_card(_config(), KEY, 1, license="apache-2.0"))[0])


def test_release_card_renders_and_parses_back():
    card = ReleaseCard(
        name="demo",
        license="apache-2.0",
        base_model=["google/gemma-3-270m"],
        registry="file:///tmp/reg",
        description="Two dictionaries trained by `make demo`.",
        entries=[
            ReleaseEntry(key=f"{KEY}@v1", sha256="cd" * 32),
            ReleaseEntry(key="google/gemma-3-270m:resid_post/layer_6/width_4096/sae@v3"),
        ],
    )
    assert ReleaseCard.parse(card.render()) == card
    with pytest.raises(CardError, match="scope_hub_release"):
        ReleaseCard.parse("---\nlicense: mit\nbase_model: x\n---\nhello\n")


def test_card_source_keeps_only_what_the_author_wrote():
    from scope_hub.cards import CardSource

    author = "---\nlicense: mit\nbase_model: google/gemma-3-270m\ntags: [mine, topk]\n---\n\nMy text.\n\n"
    src = CardSource.parse(author, _config(), KEY)
    assert src == CardSource(front={"license": "mit", "tags": ["mine"]}, text="My text.")  # defaults dropped
    rendered = render_dictionary_card(_config(), KEY, 7, text=author, registry_url="file:///r")
    assert CardSource.parse(rendered, _config(), KEY) == src  # a rendered card gives its source back
    again = render_dictionary_card(_config(), KEY.with_ref(None), 7, text=rendered, registry_url="file:///r")
    assert again == rendered  # rendering is idempotent, so re-pushing a pulled folder changes nothing
    assert CardSource.parse(author.replace("My text.", "Other."), _config(), KEY).digest != src.digest
    assert CardSource.parse(author.replace("mit", "apache-2.0"), _config(), KEY).digest != src.digest
    with pytest.raises(CardError, match="says license 'mit' but 'apache-2.0'"):
        CardSource.parse(author, _config(), KEY, license="apache-2.0", strict=True)
    assert CardSource.parse("Just text", _config(), KEY, license="mit").front == {"license": "mit"}


def test_cards_never_carry_secrets_from_registry_urls_and_pin_the_base_model_revision():
    text = render_dictionary_card(
        _config(model_revision="abc123"),
        KEY,
        1,
        license="mit",
        registry_url="s3://AKIA:secret@bucket/reg?X-Amz-Signature=sig",
    )
    assert "secret" not in text and "Signature" not in text and "registry='s3://bucket/reg'" in text
    assert "ScopedModel.from_pretrained('google/gemma-3-270m', dictionaries=[" in text and "revision='abc123'" in text


def test_release_entries_pin_exact_versions():
    with pytest.raises(ValueError, match="exact version"):
        ReleaseEntry(key=str(KEY))
    with pytest.raises(ValueError, match="exact version"):
        ReleaseEntry(key=f"{KEY}@latest")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ReleaseEntry(key=f"{KEY}@v1", sha256="abc")
    card = ReleaseCard(name="r", version=3, license="mit", base_model=["m"], entries=[ReleaseEntry(key=f"{KEY}@v2")])
    text = card.render()
    assert "# r (v3)" in text and "not yet built" in text and ReleaseCard.parse(text) == card
    with pytest.raises(CardError, match="entries"):
        ReleaseCard.parse(text.replace(f"{KEY}@v2", str(KEY)))
