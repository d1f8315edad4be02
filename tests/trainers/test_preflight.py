"""Mistakes a config shows are reported before anything slow, alone, and naming both sides of a contradiction."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainers.pipeline
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, HookpointError
from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer
from trainers.cli import main
from trainers.config import load_config
from trainers.pipeline import harvest_only, train

TEXT = "A tiny model reads tiny text, and a tiny dictionary learns its tiny features. " * 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tiny_gemma3().save_pretrained(folder)  # 2 layers
    tiny_tokenizer().save_pretrained(folder)
    (folder / "text.txt").write_text(TEXT)
    return folder


@pytest.fixture(scope="module")
def harvest(model_dir: Path, tmp_path_factory) -> Path:
    """A finished harvest of the tiny model's resid_post at layer 1."""
    root = tmp_path_factory.mktemp("harvest") / "resid_post_1"
    harvest_only(load_config(None, [*_model_args(model_dir), "harvest.layer=1", f"harvest.cache_dir={root}"]))
    return root


def _model_args(model_dir: Path) -> list[str]:
    return [f"model.id={model_dir}", f"data.paths=[{model_dir / 'text.txt'}]", "data.context_size=32"]


TRAIN = [
    "dictionary.architecture=topk",
    "dictionary.k=4",
    "dictionary.d_sae=32",
    "train.tokens=2048",
    "train.batch_size=512",
    "optim.warmup_steps=1",
    "eval.tokens=256",
    "train.threads=1",
    "train.progress=false",
]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(cfg):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(trainers.pipeline, "load_model", refuse)


def test_a_layer_out_of_range_fails_before_the_model_loads(model_dir: Path, tmp_path: Path, no_model_load) -> None:
    cfg = load_config(None, [*_model_args(model_dir), "harvest.layer=40", f"output.dir={tmp_path}", *TRAIN])
    with pytest.raises(HookpointError, match="40"):
        train(cfg)


def test_a_training_config_contradicting_its_harvest_names_both_values(harvest: Path, tmp_path: Path) -> None:
    base = [f"harvest.cache_dir={harvest}", f"output.dir={tmp_path / 'out'}", *TRAIN]
    for override, ours, theirs in (
        ("model.id=other/model", "model.id=other/model", "activations of "),
        ("harvest.site=attn_out", "harvest.site=attn_out", "site resid_post"),
        ("harvest.layer=9", "harvest.layer=9", "layers [1]"),
        ("output.key=tiny:resid_post/layer_5/width_32/sae", "output.key=", "layers [1]"),
    ):
        with pytest.raises(ConfigError) as caught:
            train(load_config(None, [*base, override]))
        message = str(caught.value)
        assert ours in message and theirs in message and str(harvest) in message, message


def test_training_from_a_harvest_alone_records_where_it_was_harvested(harvest: Path, model_dir: Path, tmp_path) -> None:
    outcome = train(load_config(None, [f"harvest.cache_dir={harvest}", f"output.dir={tmp_path / 'out'}", *TRAIN]))
    config = Dictionary.from_pretrained(outcome.folder).config
    assert (config.model, config.site, config.layer) == (str(model_dir), "resid_post", 1)
    assert config.hook_point_in == "model.layers.1.output"


def test_an_empty_harvest_folder_says_it_is_empty(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "harvest"
    empty.mkdir()
    # l0_warmup_steps (1000) outlasts this run: its warning must not come before the error
    code = main([f"harvest.cache_dir={empty}", "train.tokens=2048", "dictionary.l0_target=4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "warning" not in err, err
    assert f"harvest.cache_dir={empty} is empty" in err


def test_a_rerun_reuses_its_harvest_and_finished_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    # What a second `make demo` does: the same config again, with a transcoder whose output site is the
    # default (a value read back from the harvest must not change the checkpoint's fingerprint).
    args = [
        *_model_args(model_dir),
        "harvest.layer=1",
        "harvest.site=mlp_in",
        "dictionary.type=transcoder",
        f"harvest.cache_dir={tmp_path / 'harvest'}",
        f"train.checkpoint_dir={tmp_path / 'ckpt'}",
        f"output.dir={tmp_path / 'out'}",
        *TRAIN,
    ]
    first = train(load_config(None, args))
    again = train(load_config(None, args))
    assert again.result.steps == first.result.steps and not again.result.history, "resumed at the end"
    assert again.dictionary.config.metrics.fvu == pytest.approx(first.dictionary.config.metrics.fvu)
