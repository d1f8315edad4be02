"""Distributed fault paths and collectives on 2 gloo ranks: a rank failing mid-harvest stops its peer at once with
the original message, the end-of-run wait outlasts the collective timeout, and gradients average in place."""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer

FAILING_RANK = 1
DISK_FULL = "No space left on device while writing shard"


def _spawn(worker, *args) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(rank, *args)) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
        assert proc.exitcode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ.update(MASTER_PORT=str(port), OMP_NUM_THREADS="1")


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def _harvest_worker(rank: int, port: int, config: str, folder: str) -> None:
    """Harvest on 2 ranks; rank 1's first shard write fails like a full disk, and rank 1 then stays up
    (as a rank whose process lingers would) until it sees what rank 0 did."""
    _join(rank, port)
    from trainers import harvest_shards
    from trainers.config import load_config
    from trainers.distributed import DistContext
    from trainers.pipeline import harvest_only

    def disk_full(self, *args, **kwargs):
        raise OSError(DISK_FULL)

    if rank == FAILING_RANK:
        harvest_shards.ShardWriter.write = disk_full
    record = Path(folder, f"rank{rank}.json")
    with DistContext.from_env() as ctx:
        try:
            harvest_only(load_config(config), ctx)
            outcome: dict[str, object] = {"error": None}
        except Exception as error:
            outcome = {"error": type(error).__name__, "message": str(error), "rank": getattr(error, "rank", None)}
        if rank == FAILING_RANK:
            outcome["peer_stopped_first"] = _wait_for(Path(folder, f"rank{1 - rank}.json"), 60)
        record.write_text(json.dumps(outcome))


@pytest.fixture
def harvest_config(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-gemma3"
    tiny_gemma3().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    (model / "text.txt").write_text("Shards are written by every rank of the harvest. " * 20)
    cfg = {
        "model": {"id": str(model)},
        "data": {"paths": [str(model / "text.txt")], "context_size": 16},
        "harvest": {"layers": [0], "batch_sequences": 2, "shard_tokens": 64, "cache_dir": str(tmp_path / "h")},
        "train": {"progress": False, "threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_rank_failing_mid_harvest_stops_every_rank_with_its_message(harvest_config: Path, tmp_path: Path) -> None:
    _spawn(_harvest_worker, _free_port(), str(harvest_config), str(tmp_path))
    failed = json.loads((tmp_path / f"rank{FAILING_RANK}.json").read_text())
    peer = json.loads((tmp_path / f"rank{1 - FAILING_RANK}.json").read_text())
    assert failed["error"] == "OSError" and failed["message"] == DISK_FULL
    # the peer stopped while the failed rank was still up: not through a dead connection or a timeout
    assert failed["peer_stopped_first"]
    assert peer["error"] == "PeerRankError" and peer["rank"] == FAILING_RANK
    assert f"rank {FAILING_RANK} failed" in peer["message"] and f"OSError: {DISK_FULL}" in peer["message"]
    assert not json.loads((tmp_path / "h" / "harvest.json").read_text())["complete"]


def _grads(rank: int) -> list[torch.Tensor | None]:
    """Rank ``rank``'s gradients: a big one (averaged in place), a transposed and a small one (the flat
    all-reduce), and a missing one (zeros)."""
    gen = torch.Generator().manual_seed(rank)
    return [
        torch.randn(64, 32, generator=gen),
        torch.randn(32, 64, generator=gen).t(),
        torch.randn(5, generator=gen),
        None,
    ]


def _collectives_worker(rank: int, port: int, folder: str) -> None:
    """Gradient averaging; then rank 0 works past the (shortened) collective timeout before the end-of-run wait."""
    _join(rank, port)
    from trainers import distributed
    from trainers.distributed import DistContext

    distributed.IN_PLACE_BYTES = 1024  # the 8 KiB gradients take the in-place path, the 20-byte one the flat one
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=3))
    ctx = DistContext(rank, 2)
    params = [torch.nn.Parameter(torch.zeros(64, 32)), torch.nn.Parameter(torch.zeros(64, 32))]
    params += [torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3))]
    for param, grad in zip(params, _grads(rank)):
        param.grad = grad
    ctx.average_gradients(params)
    save_file({str(i): p.grad.contiguous() for i, p in enumerate(params)}, str(Path(folder, f"grads{rank}.st")))
    Path(folder, f"strides{rank}.json").write_text(json.dumps([p.grad.stride() for p in params]))

    ctx.prepare_final_wait(datetime.timedelta(seconds=60))
    outcome: dict[str, object] = {}
    if rank == 0:
        time.sleep(8)  # evaluation and publish: longer than the collective timeout
    else:
        try:  # the same wait on the default group gives up after the collective timeout
            dist.barrier()
            outcome["plain_barrier"] = "returned"
        except RuntimeError:  # gloo: "Timed out waiting ... for recv"
            outcome["plain_barrier"] = "timed out"
    ctx.final_wait()
    outcome["final_wait"] = "returned"
    Path(folder, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def collectives(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collectives")
    _spawn(_collectives_worker, _free_port(), str(folder))
    return folder


def test_gradients_are_averaged_in_place_and_flat(collectives: Path) -> None:
    expected = [
        (a + b) / 2 if a is not None and b is not None else torch.zeros(3) for a, b in zip(_grads(0), _grads(1))
    ]
    for rank in range(2):
        got = load_file(str(collectives / f"grads{rank}.st"))
        for i, want in enumerate(expected):
            torch.testing.assert_close(got[str(i)], want, atol=0, rtol=0)
        strides = json.loads((collectives / f"strides{rank}.json").read_text())
        assert strides[:2] == [[32, 1], [1, 64]]  # a transposed gradient keeps its layout


def test_the_final_wait_outlasts_the_collective_timeout(collectives: Path) -> None:
    waiting = json.loads((collectives / "rank1.json").read_text())
    assert waiting == {"plain_barrier": "timed out", "final_wait": "returned"}
    assert json.loads((collectives / "rank0.json").read_text()) == {"final_wait": "returned"}
