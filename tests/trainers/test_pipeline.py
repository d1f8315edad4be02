"""End to end on a tiny model: text -> harvest -> train -> evaluate (incl. delta LM loss) -> registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from scope_hub.cards import parse_card
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import BOS_ID, tiny_gemma3
from tests.trainers.helpers import SMALL_TOPK, tiny_model_folder
from trainers.config import load_config
from trainers.harvest_shards import read_meta
from trainers.lm_eval import delta_lm_loss
from trainers.pipeline import train
from trainers.publish import shareable_training_config

TEXT = "A tiny model reads tiny text, and a tiny dictionary learns its tiny features. " * 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-gemma3"), TEXT)


def _cfg(model_dir: Path, tmp: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.id={model_dir}",
            f"data.paths=[{model_dir / 'text.txt'}]",
            "data.context_size=32",
            "harvest.layer=1",
            "harvest.batch_sequences=8",
            "dictionary.architecture=topk",
            "dictionary.k=8",
            "dictionary.d_sae=128",
            "train.tokens=16384",
            "train.batch_size=512",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "eval.tokens=512",
            "train.threads=1",
            "train.progress=false",
            f"output.dir={tmp / 'out'}",
            *extra,
        ],
    )


def test_train_from_text_to_registry(model_dir: Path, tmp_path: Path) -> None:
    registry = f"file://{tmp_path / 'registry'}"
    key = "tiny-gemma3:resid_post/layer_1/width_128/sae/topk_k8"
    cfg = _cfg(
        model_dir,
        tmp_path,
        f"harvest.cache_dir={tmp_path / 'harvest'}",
        "eval.delta_lm_loss=true",
        "eval.lm_sequences=4",
        f"output.registry={registry}",
        f"output.key={key}",
        "train.seed=7",
    )
    outcome = train(cfg)
    assert outcome.push.version == 1
    loaded = Dictionary.from_pretrained(outcome.folder)
    c = loaded.config
    assert c.hook_point_in == "model.layers.1.output" and c.site == "resid_post" and c.layer == 1
    assert c.normalization.kind == "none"  # folded: reads raw activations
    m = c.metrics
    assert m.eval_tokens == 512 and 0 < m.l0 <= 8 and m.fvu < 0.6
    # a random tiny LM: splicing changes the loss (either way); the error term undoes it exactly
    assert abs(m.delta_lm_loss_error_term) < 1e-4 and abs(m.delta_lm_loss) > 1e-4
    harvest = read_meta(tmp_path / "harvest")
    p = c.provenance
    assert p.dataset_sha256 == harvest["data"]["sha256"] and p.seed == 7 and "torch" in p.software
    assert p.training_config == shareable_training_config(cfg) and c.model == str(model_dir)
    assert str(tmp_path) not in json.dumps(p.training_config), "no local folder of the pusher is published"

    from scope_hub.registry import Registry

    pulled = Registry(registry).pull(key)
    front, _body = parse_card((pulled / "README.md").read_text())
    fields = front["scope_hub"]
    # the card names the model by its Hub-style key model, never this machine's folder
    assert front["base_model"] == "tiny-gemma3" and fields["training_data"]["sha256"] == p.dataset_sha256
    assert fields["seed"] == 7 and fields["metrics"]["fvu"] == pytest.approx(m.fvu)
    assert fields["training_config"]["dictionary"]["k"] == 8 and "torch" in fields["software"]
    assert torch.equal(Dictionary.from_pretrained(pulled).w_dec, loaded.w_dec)
    again = train(cfg)  # an identical rerun publishes nothing new
    assert (again.push.created, again.push.version) == (False, 1)


def test_streaming_transcoder(model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        model_dir,
        tmp_path,
        "dictionary.type=transcoder",
        "harvest.site=mlp_in",
        "harvest.stream_window=2",
        "train.tokens=2048",
    )
    outcome = train(cfg)
    c = outcome.dictionary.config
    assert c.hook_point_in.endswith("pre_feedforward_layernorm.output")
    assert c.hook_point_out.endswith("post_feedforward_layernorm.output")
    assert c.metrics.eval_tokens == 512 and c.metrics.fvu == c.metrics.fvu  # evaluated (4 steps: no quality bar)


@pytest.mark.parametrize("tokens", [512, 1_000_000])
def test_streaming_shortfall_is_a_config_error_whose_fixes_fit(model_dir: Path, tmp_path: Path, tokens: int) -> None:
    # One chunk is stream_window x batch_size = 16 x 512 tokens, more than the text holds: lowering
    # train.tokens alone cannot help, so the message must name overrides that do (each is tried below).
    too_big = (f"train.tokens={tokens}", "harvest.stream_window=16")
    with pytest.raises(ConfigError, match=r"^streaming needs \d+ training tokens but the data holds \d+") as caught:
        train(_cfg(model_dir, tmp_path, *too_big))
    fixes = re.search(r"; set (.+?), or harvest to disk", str(caught.value)).group(1).split(" or ")
    assert len(fixes) == (2 if tokens == 512 else 1), str(caught.value)
    for i, fix in enumerate(fixes):
        outcome = train(_cfg(model_dir, tmp_path, *too_big, *fix.split(), f"output.dir={tmp_path / str(i)}"))
        assert outcome.folder is not None and outcome.result.steps >= 1, fix


def test_no_data_says_so(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^no data: set data\.paths \(text/JSONL files\) or data\.dataset"):
        train(_cfg(model_dir, tmp_path, "data.paths=[]"))


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder", "clt"])
def test_splice_with_error_term_leaves_the_loss_unchanged(kind: str) -> None:
    model = tiny_gemma3()
    extra = {"layers": [0, 1, 2]} if kind == "clt" else {"layer": 1}
    site = "resid_post" if kind == "sae" else "mlp_in"
    config = make_config(kind, "jumprelu", d_in=64, d_out=64, d_sae=32, site=site, **extra)
    dictionary = make_dictionary(config, seed=3)
    ids = torch.randint(0, 256, (4, 16))
    ids[:, 0] = BOS_ID
    delta, with_error = delta_lm_loss(model, dictionary, ids, torch.ones_like(ids), BOS_ID)
    assert abs(with_error) < 1e-5 and abs(delta) > 1e-3


def test_evaluate_on_demand_rewrites_metrics(tmp_path: Path) -> None:
    from trainers.cli import main

    common = [*SMALL_TOPK, f"output.dir={tmp_path / 'sae'}"]
    assert main([*common, "train.tokens=8192", "eval.tokens=0"]) == 0
    assert Dictionary.from_pretrained(tmp_path / "sae").config.metrics.fvu is None
    assert main([*common, "eval.tokens=2048", "--evaluate", str(tmp_path / "sae")]) == 0
    metrics = Dictionary.from_pretrained(tmp_path / "sae").config.metrics
    assert metrics.eval_tokens == 2048 and 0 < metrics.fvu < 1


@pytest.mark.parametrize("storage", ["stream", "disk"])
def test_several_dictionaries_from_one_forward_equal_their_single_runs(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str
) -> None:
    from trainers.harvest import Harvester

    forwards = []
    original = Harvester.__call__
    monkeypatch.setattr(
        Harvester, "__call__", lambda self, *a: forwards.append(len(self.spec.hookpoints)) or original(self, *a)
    )
    extra = [
        "harvest.stream_window=4",
        "train.tokens=2048",
        "train.batch_size=256",
        "train.log_every=2",
        "eval.tokens=256",
        *([f"harvest.cache_dir={tmp_path / 'harvest'}"] if storage == "disk" else []),
    ]
    many = _cfg(
        model_dir,
        tmp_path,
        *extra,
        "harvest.layer=null",
        "harvest.layers=[0,2]",
        "harvest.sites=[resid_post,mlp_out]",
        "output.key=tiny:{site}/layer_{layer}/width_128/sae/topk_k8",
        f"output.dir={tmp_path / 'many'}",
    )
    outcome = train(many)
    many_forwards, forwards[:] = list(forwards), []
    assert [p.name for p in outcome.parts] == [
        "resid_post/layer_0",
        "mlp_out/layer_0",
        "resid_post/layer_2",
        "mlp_out/layer_2",
    ]
    assert all(n == 4 for n in many_forwards)  # every forward captured all four hookpoints
    if storage == "disk":
        meta = read_meta(tmp_path / "harvest")
        assert meta["complete"] and len(meta["hookpoints"]) == 4 and len(meta["targets"]) == 4  # one harvest
    for part in outcome.parts:
        layer, site = int(part.name.rsplit("_", 1)[1]), part.name.split("/")[0]
        single = _cfg(
            model_dir,
            tmp_path,
            *[e for e in extra if "cache_dir" not in e],
            *([f"harvest.cache_dir={tmp_path / part.name}"] if storage == "disk" else []),
            f"harvest.layer={layer}",
            f"harvest.site={site}",
            f"output.dir={tmp_path / 'single' / part.name}",
        )
        alone = train(single)
        if part is outcome.parts[0]:
            assert len(forwards) == len(many_forwards)  # N dictionaries cost the forwards of one
        folder = tmp_path / "many" / part.name
        assert Path(part.folder) == folder and (folder / "README.md").is_file()
        loaded = Dictionary.from_pretrained(folder)
        assert loaded.config.hook_point_in == alone.dictionary.config.hook_point_in
        for name, value in alone.dictionary.named_parameters():
            torch.testing.assert_close(loaded.get_parameter(name), value, atol=1e-6, rtol=1e-5)
        assert loaded.config.metrics.fvu == pytest.approx(alone.dictionary.config.metrics.fvu, rel=1e-5)
        front, _ = parse_card((folder / "README.md").read_text())
        assert front["scope_hub"]["key"] == f"tiny:{site}/layer_{layer}/width_128/sae/topk_k8"
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == [2, 4, 6, 8] and {"tok_s", "l0", "fvu", "dead", "tokens"} <= set(lines[0])


def test_logs_off_a_terminal_metrics_jsonl_and_wandb_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(
        None,
        [
            *SMALL_TOPK,
            "train.tokens=10240",
            "train.log_every=5",
            "output.log_every=10",
            "eval.tokens=1024",
            f"output.dir={tmp_path / 'sae'}",
            "output.wandb={project: scope-hub-test}",
        ],
    )
    train(cfg)  # stderr is captured: not a terminal, so plain lines instead of a bar
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"]
    assert re.fullmatch(r"step 20/20 tokens 10240 tok/s \d+ loss \S+ l0 \S+ fvu \S+ dead \S+%", lines[-1])
    records = [json.loads(line) for line in (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20] and records[-1]["tokens"] == 10240
    assert {"loss", "recon", "l0", "fvu", "dead", "tok_s"} <= set(records[-1])
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_a_resumed_run_keeps_the_metrics_its_killed_run_logged(tmp_path: Path) -> None:
    from trainers.progress import RunLog

    killed = RunLog("", str(tmp_path), 20, batch_tokens=100, log_every=5, lines=False)
    killed.observe([{"step": s, "loss": 1.0 / s} for s in (5, 10, 15)])  # checkpoint at 10, killed after 15
    resumed = RunLog("", str(tmp_path), 20, batch_tokens=100, log_every=5, lines=False)
    resumed.observe([{"step": 15, "loss": 0.5}])
    resumed.observe([{"step": 15, "loss": 0.5}, {"step": 20, "loss": 0.4}])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["loss"]) for r in records] == [
        (5, 500, 0.2),
        (10, 1000, 0.1),
        (15, 1500, 0.5),
        (20, 2000, 0.4),
    ]
