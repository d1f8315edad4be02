"""Harvests written by several torchrun ranks, killed and resumed, and on S3 (moto): row for row the
single-process harvest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.registry.conftest import isolated_env, moto_endpoint, s3_bucket  # noqa: F401 - fixtures
from tests.trainers.helpers import tiny_model_folder
from trainers.config import load_config
from trainers.distributed import DistContext
from trainers.harvest_shards import HarvestReader, read_meta
from trainers.pipeline import harvest_only

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Every rank harvests its own windows; the union is the single-process harvest, row for row. " * 10

KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from trainers import harvest_shards
from trainers.cli import main

write = harvest_shards.ShardWriter.write


def write_then_die(self, *args, **kwargs):
    record = write(self, *args, **kwargs)
    if os.environ.get("RANK", "0") == os.environ["DIE_RANK"]:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash right after this rank's first shard
    return record


harvest_shards.ShardWriter.write = write_then_die
sys.exit(main(sys.argv[1:]))
"""


STREAM_ROWS = """
import sys
from safetensors.torch import save_file
from trainers.config import load_config
from trainers.distributed import DistContext
from trainers.distributed import DistContext
from trainers.pipeline import build_environment

with DistContext.from_env() as ctx:
    env = build_environment(load_config(sys.argv[1]), ctx)
    stream = env.source.stream
    rows = stream.rows(100, 700)
    save_file({k: v.contiguous() for k, v in rows.items()}, f"{sys.argv[2]}/rows_{ctx.rank}.safetensors")
    with open(f"{sys.argv[2]}/forwards_{ctx.rank}", "w") as handle:
        handle.write(str(stream.forwards))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-gemma3"), TEXT)


def _config(model_dir: Path, tmp: Path, cache: str) -> Path:
    cfg = {
        "model": {"id": str(model_dir)},
        "data": {"paths": [str(model_dir / "text.txt")], "context_size": 16},
        "harvest": {"layers": [0, 2], "sites": ["resid_post", "mlp_out"], "batch_sequences": 2, "shard_tokens": 256},
        "train": {"progress": False, "threads": 1},
        "harvest_cache": cache,
    }
    cfg["harvest"]["cache_dir"] = cfg.pop("harvest_cache")
    path = tmp / f"run-{abs(hash(cache))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(args: list[str], ranks: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *args]
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)


def _assert_same_rows(got: str | Path, want: str | Path) -> None:
    a, b = HarvestReader(got), HarvestReader(want)
    assert a.meta["complete"] and len(a) == len(b) > 0
    assert [s["sha256"] for s in a.meta["shards"]] == [s["sha256"] for s in b.meta["shards"]]
    every = torch.arange(len(b))
    for name in [*b.meta["hookpoints"], "token_id", "sequence", "position"]:
        assert torch.equal(a.column(name, every), b.column(name, every)), name


@pytest.fixture(scope="module")
def single(model_dir: Path, tmp_path_factory) -> Path:
    """The reference: one process harvests everything."""
    tmp = tmp_path_factory.mktemp("single")
    harvest_only(load_config(_config(model_dir, tmp, str(tmp / "h"))))
    meta = read_meta(tmp / "h")
    assert meta["n_shards"] >= 6 and len(meta["hookpoints"]) == 4
    return tmp / "h"


def test_two_ranks_write_the_single_process_harvest(model_dir: Path, tmp_path: Path, single: Path) -> None:
    done = _torchrun(["-m", "trainers", str(_config(model_dir, tmp_path, str(tmp_path / "h"))), "--harvest-only"], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_rows(tmp_path / "h", single)


def test_a_rank_killed_mid_harvest_resumes_on_another_rank_count(model_dir: Path, tmp_path: Path, single: Path) -> None:
    script = tmp_path / "dies.py"
    script.write_text(KILL_AFTER_FIRST_SHARD)
    cache = tmp_path / "h"
    config = _config(model_dir, tmp_path, str(cache))
    died = _torchrun([str(script), str(config), "--harvest-only"], 2, {"DIE_RANK": "1"})
    assert died.returncode != 0
    meta = read_meta(cache)
    records = sorted(cache.glob("shard_*.json"))
    assert not meta["complete"] and 0 < len(records) < meta["n_shards"]
    before = {
        p.name: p.stat().st_mtime_ns for p in cache.glob("shard_*.safetensors") if p.with_suffix(".json").exists()
    }
    harvest_only(load_config(config))  # one process finishes what the two left
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard_*.safetensors")}
    assert all(after[name] == stamp for name, stamp in before.items())  # finished shards were not redone
    _assert_same_rows(cache, single)


def test_harvest_on_s3_survives_a_kill_mid_write(
    model_dir: Path,
    tmp_path: Path,
    single: Path,
    s3_bucket: str,  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> None:
    import s3fs

    url = f"s3://{s3_bucket}/harvest"
    config = _config(model_dir, tmp_path, url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainers", str(config), "--harvest-only"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint}, use_listings_cache=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(fs.glob(f"{s3_bucket}/harvest/shard_*.json")) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still harvesting
    proc.send_signal(signal.SIGKILL)  # somewhere in the middle of writing shards
    proc.wait()
    fs.invalidate_cache()
    meta = read_meta(url)
    assert meta is not None and not meta["complete"]
    for name in fs.glob(f"{s3_bucket}/harvest/shard_*.safetensors"):
        # a shard object is whole (its record may not exist yet): the safetensors header parses and sizes add up
        with fs.open(name, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        assert fs.size(name) == 8 + header_len + end
    harvest_only(load_config(config))
    _assert_same_rows(url, single)


def test_streaming_ranks_share_the_forwards_and_see_the_single_process_rows(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from trainers.pipeline import build_environment

    config = _config(model_dir, tmp_path, "unused")
    raw = yaml.safe_load(config.read_text())
    del raw["harvest"]["cache_dir"]  # streaming
    raw["train"].update(tokens=256, batch_size=64)
    raw["harvest"]["stream_window"] = 4
    raw["eval"] = {"tokens": 64}
    config.write_text(yaml.safe_dump(raw))
    script = tmp_path / "stream_rows.py"
    script.write_text(STREAM_ROWS)
    done = _torchrun([str(script), str(config), str(tmp_path)], 2)
    assert done.returncode == 0, done.stderr[-3000:]
    stream = build_environment(load_config(config), DistContext()).source.stream
    want = stream.rows(100, 700)
    for rank in range(2):
        got = load_file(tmp_path / f"rows_{rank}.safetensors")
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    shares = [int((tmp_path / f"forwards_{rank}").read_text()) for rank in range(2)]
    assert sum(shares) == stream.forwards and max(shares) - min(shares) <= 1  # each rank ran its half


def test_training_from_an_s3_harvest_writes_every_dictionary_to_s3(
    model_dir: Path,
    tmp_path: Path,
    single: Path,
    s3_bucket: str,  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> None:
    import s3fs

    from scope_hub.dictionaries import Dictionary
    from trainers.pipeline import train

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint}, use_listings_cache=False)
    fs.put(str(single), f"{s3_bucket}/harvest", recursive=True)  # a finished harvest on the store
    overrides = [
        "dictionary.architecture=topk",
        "dictionary.k=4",
        "dictionary.d_sae=32",
        "train.tokens=512",
        "train.batch_size=128",
        "optim.lr=1e-2",
        "eval.tokens=64",
        "output.key=tiny:{site}/layer_{layer}/width_32/sae/topk_k4",
        f"output.dir=s3://{s3_bucket}/out",
    ]
    config = _config(model_dir, tmp_path, f"s3://{s3_bucket}/harvest")
    outcome = train(load_config(config, overrides))  # no model: the harvest says which hookpoints each reads
    assert [p.name for p in outcome.parts] == [
        "resid_post/layer_0",
        "mlp_out/layer_0",
        "resid_post/layer_2",
        "mlp_out/layer_2",
    ]
    local = train(
        load_config(_config(model_dir, tmp_path, str(single)), [*overrides, f"output.dir={tmp_path / 'out'}"])
    )
    for part, same in zip(outcome.parts, local.parts):
        names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/out/{part.name}"))
        assert names == ["README.md", "config.json", "feature_stats.safetensors", "metrics.jsonl", "params.safetensors"]
        fs.get(f"{s3_bucket}/out/{part.name}", str(tmp_path / "got" / part.name), recursive=True)
        got = Dictionary.from_pretrained(tmp_path / "got" / part.name)
        assert torch.equal(got.w_dec, same.dictionary.w_dec)  # the store changes nothing
