"""``train.distribute_modules`` under torchrun: 3 gloo ranks train 4 dictionaries of a tiny model (2 + 1 + 1)
and write exactly the folders one process writes; a resumed job agrees on a common step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scope_hub.errors import ConfigError
from scope_hub.registry import Registry
from scope_hub.testing.tiny_models import D_MODEL, tiny_gemma3, tiny_tokenizer
from trainers.checkpoint import list_checkpoints
from trainers.config import load_config
from trainers.module_parallel import plan_modules, rank_exchange_bytes
from trainers.pipeline import train

ROOT = Path(__file__).resolve().parents[2]
WORLD, BATCH = 3, 384
TEXT = "Each rank trains its own dictionaries; every token of the batch still reaches them all. " * 80
NAMES = ["resid_post/layer_0", "mlp_out/layer_0", "resid_post/layer_2", "mlp_out/layer_2"]

RUN = """
import json, os, signal, sys
import torch
import torch.distributed as dist
from trainers import pipeline
from trainers.config import load_config
from trainers.trainer import Trainer

real_all_to_all, real_drive, sent, owned = dist.all_to_all_single, pipeline.drive, [], {}


def counting(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
    others = sum(n for r, n in enumerate(input_split_sizes) if r != dist.get_rank())
    sent.append(others * input.element_size())  # what leaves this rank (its own split stays)
    return real_all_to_all(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)


def spy(trainers, logs, vote=None):
    for t in trainers:
        adam = sum(v.numel() for s in t.optimizer.state.values() for v in s.values() if v.dim() > 0)
        owned[t.cfg.output.dir] = {"start": t.step, "params": sum(p.numel() for _, p in t.named), "adam": adam}
    results = real_drive(trainers, logs, vote)
    for t in trainers:  # after training: Adam's moments exist for exactly these parameters
        owned[t.cfg.output.dir]["adam"] = sum(
            v.numel() for s in t.optimizer.state.values() for v in s.values() if v.dim() > 0
        )
    return results


def advance_then_sigterm(self):
    stats = real_advance(self)
    if self.step == int(os.environ["SIGTERM_AT"]):  # as a scheduler's SIGTERM, on this rank alone
        os.kill(os.getpid(), signal.SIGTERM)
    return stats


real_advance = Trainer.advance
if os.environ.get("SIGTERM_RANK") == os.environ["RANK"]:
    Trainer.advance = advance_then_sigterm
dist.all_to_all_single, pipeline.drive = counting, spy
pipeline.train(load_config(sys.argv[1], sys.argv[3:]))
with open(f"{sys.argv[2]}/rank{os.environ['RANK']}.json", "w") as handle:
    json.dump({"sent": sent, "owned": owned}, handle)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tiny_gemma3().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "text.txt").write_text(TEXT)
    return folder


def _overrides(model_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        f"model.id={model_dir}",
        f"data.paths=[{model_dir / 'text.txt'}]",
        "data.context_size=32",
        "harvest.layers=[0,2]",
        "harvest.sites=[resid_post,mlp_out]",
        "harvest.batch_sequences=8",
        "harvest.stream_window=4",
        "dictionary.architecture=topk",
        "dictionary.k=8",
        "dictionary.d_sae=128",
        f"train.tokens={8 * BATCH}",
        f"train.batch_size={BATCH}",
        "train.log_every=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "eval.tokens=256",
        "train.threads=1",
        "train.progress=false",
        "output.key=tiny:{site}/layer_{layer}/width_128/sae/topk_k8",
        *extra,
    ]


def _torchrun(model_dir: Path, tmp: Path, report: Path, *extra: str, env: dict[str, str] | None = None) -> list[dict]:
    report.mkdir(parents=True, exist_ok=True)
    script = tmp / "run_modules.py"
    script.write_text(RUN)
    config = tmp / "empty.yaml"
    config.write_text("{}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD)]
    args = [str(script), str(config), str(report), *_overrides(model_dir, tmp, "train.distribute_modules=true", *extra)]
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([*cmd, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _assert_same_folders(got: Path, want: Path) -> None:
    for name in NAMES:
        a, b = load_file(got / name / "params.safetensors"), load_file(want / name / "params.safetensors")
        assert a.keys() == b.keys()
        for key in b:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=f"{name}: {key}")
        config_a, config_b = (json.loads((f / name / "config.json").read_text()) for f in (got, want))
        metrics_a, metrics_b = config_a.pop("metrics"), config_b.pop("metrics")
        for config in (config_a, config_b):
            config["provenance"].pop("created_at")  # written at save time
        assert config_a["provenance"]["training_config"]["train"].pop("distribute_modules") is True  # as trained
        assert config_b["provenance"]["training_config"]["train"].pop("distribute_modules") is False
        assert config_a == config_b, name
        assert metrics_a["fvu"] == pytest.approx(metrics_b["fvu"], rel=1e-5) and metrics_a["l0"] == metrics_b["l0"]
        logs = [[json.loads(x) for x in (f / name / "metrics.jsonl").read_text().splitlines()] for f in (got, want)]
        assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2, 4, 6, 8]
        assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
        card = (got / name / "README.md").read_text()
        assert (
            card.replace("distribute_modules: true", "distribute_modules: false")
            == (want / name / "README.md").read_text()
        )


def _assert_each_rank_owns_its_plan(reports: list[dict], out: Path) -> None:
    plan = plan_modules(NAMES, WORLD)
    assert [len(p) for p in plan] == [2, 1, 1]
    for rank, report in enumerate(reports):
        owned = {str(Path(d).relative_to(out)): v for d, v in report["owned"].items()}
        assert sorted(owned) == sorted(plan[rank])  # this rank built Trainers (and Adam state) for these only
        for stats in owned.values():
            assert stats["adam"] == 2 * stats["params"]  # exp_avg + exp_avg_sq of its own parameters, nothing else
        # every step (plus the normalisation batches read while setting up) one all_to_all sends this
        # rank's B/N rows of each target another rank owns, at d_model fp32 values per row
        per_step = BATCH // WORLD * D_MODEL * 4 * (len(NAMES) - len(plan[rank]))
        assert per_step == rank_exchange_bytes({n: (BATCH // WORLD, D_MODEL) for n in NAMES}, plan, rank)
        assert report["sent"] and set(report["sent"]) == {per_step}


def test_three_ranks_stream_the_single_process_dictionaries_through_a_sigterm(model_dir: Path, tmp_path: Path) -> None:
    ckpt = ["train.checkpoint_every=100", f"train.checkpoint_dir={tmp_path / 'ckpt'}"]
    train(load_config(None, _overrides(model_dir, tmp_path, *ckpt, f"output.dir={tmp_path / 'one'}")))
    shutil.rmtree(tmp_path / "ckpt")
    out = f"output.dir={tmp_path / 'many'}"
    # one rank alone is told to stop after step 3: every rank stops there, each target with its checkpoint
    _torchrun(model_dir, tmp_path, tmp_path / "killed", out, *ckpt, env={"SIGTERM_RANK": "2", "SIGTERM_AT": "3"})
    assert [[Path(p).name for p in list_checkpoints(tmp_path / "ckpt" / n)] for n in NAMES] == [["step_000000003"]] * 4
    assert not (tmp_path / "many" / NAMES[0] / "params.safetensors").exists()  # interrupted: nothing exported
    reports = _torchrun(model_dir, tmp_path, tmp_path / "resumed", out, *ckpt)
    assert {v["start"] for r in reports for v in r["owned"].values()} == {3}
    _assert_each_rank_owns_its_plan(reports, tmp_path / "many")
    _assert_same_folders(tmp_path / "many", tmp_path / "one")


def test_from_a_disk_harvest_and_resumed_at_the_step_every_target_shares(model_dir: Path, tmp_path: Path) -> None:
    cache = f"harvest.cache_dir={tmp_path / 'harvest'}"
    registry = f"file://{tmp_path / 'registry'}"
    ckpt = [
        "train.checkpoint_every=2",
        "train.keep_checkpoints=10",
        f"train.checkpoint_dir={tmp_path / 'ckpt'}",
        f"output.registry={registry}",  # the owners push in turn into one registry
    ]
    train(load_config(None, _overrides(model_dir, tmp_path, cache, *ckpt, f"output.dir={tmp_path / 'one'}")))
    shutil.rmtree(tmp_path / "ckpt")  # the same settings (its card records them), but no checkpoint to resume
    out = f"output.dir={tmp_path / 'many'}"
    reports = _torchrun(model_dir, tmp_path, tmp_path / "first", cache, out, *ckpt)
    _assert_each_rank_owns_its_plan(reports, tmp_path / "many")
    _assert_same_folders(tmp_path / "many", tmp_path / "one")
    hub = Registry(registry, cache_dir=tmp_path / "cache")
    keys = {f"tiny:{n.split('/')[0]}/{n.split('/')[1]}/width_128/sae/topk_k8" for n in NAMES}
    assert {s.key for s in hub.list()} == keys and all(s.versions == 2 for s in hub.list())  # one, then many
    for name in NAMES:
        site, layer = name.split("/")
        pulled = load_file(hub.pull(f"tiny:{site}/{layer}/width_128/sae/topk_k8") / "params.safetensors")
        exported = load_file(tmp_path / "many" / name / "params.safetensors")
        assert pulled.keys() == exported.keys() and all(torch.equal(pulled[k], exported[k]) for k in exported)
    # a job killed between owners' checkpoints: one target reached step 8, one only step 4, the others step 6
    for name, kept in zip(NAMES, [8, 4, 6, 6]):
        for folder in list_checkpoints(tmp_path / "ckpt" / name):
            if int(Path(folder).name.rsplit("_", 1)[1]) > kept:
                shutil.rmtree(folder)
    for name in NAMES:  # the killed job exported nothing; its metrics.jsonl holds the steps it logged
        for path in (tmp_path / "many" / name).iterdir():
            if path.name != "metrics.jsonl":
                path.unlink()
    reports = _torchrun(model_dir, tmp_path, tmp_path / "second", cache, out, *ckpt)
    assert {v["start"] for r in reports for v in r["owned"].values()} == {4}  # every target resumed at step 4
    _assert_same_folders(tmp_path / "many", tmp_path / "one")


def test_refused_combinations_name_their_fields(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.latent_parallel"):
        load_config(None, _overrides(model_dir, tmp_path, "train.distribute_modules=true", "train.latent_parallel=2"))
    one = _overrides(
        model_dir,
        tmp_path,
        "train.distribute_modules=true",
        "harvest.sites=null",
        "harvest.layers=null",
        "harvest.layer=1",
    )
    with pytest.raises(ConfigError, match="harvest.layers"):
        train(load_config(None, [*one, f"output.dir={tmp_path / 'x'}"]))
