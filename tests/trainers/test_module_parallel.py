"""Module distribution: each of 3 gloo ranks receives the whole global batch of the targets it owns."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scope_hub.errors import ConfigError
from trainers.module_parallel import ModuleExchange, exchange_activations, exchange_bytes, plan_modules
from trainers.sources import ActivationSource, rank_slice

WORLD, LOCAL_BATCH = 3, 5
WIDTHS = {"layer_0/resid_post": 8, "layer_0/mlp_out": 12, "layer_1/resid_post": 8, "layer_1/mlp_out": 16, "clt": 4}
"""Five targets of different widths (3 + 2 + ... does not divide evenly over 3 ranks)."""


def _local(rank: int) -> dict[str, torch.Tensor]:
    """What rank ``rank`` captured from its slice of the batch: a distinct tensor per (rank, target)."""
    out = {}
    for i, (name, width) in enumerate(WIDTHS.items()):
        gen = torch.Generator().manual_seed(100 * rank + i)
        out[name] = torch.randn(LOCAL_BATCH, 2, width, generator=gen)  # [tokens, layers, width]: any trailing shape
    return out


class _Rows(ActivationSource):
    """Global batch ``step`` of one target: fixed random rows; an SAE's target is its input, a transcoder's
    is another tensor (here stored in bfloat16, so the exchange must carry two dtypes without loss)."""

    def __init__(self, index: int, width: int) -> None:
        self.index, self.width = index, width

    def whole(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 * step + self.index)
        x = torch.randn(batch_size, 2, self.width, generator=gen)
        return (x, x) if self.index % 2 else (x, torch.randn(batch_size, 2, 3, generator=gen).to(torch.bfloat16))

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        x, t = self.whole(step, batch_size)
        rows = rank_slice(batch_size, rank, world)
        mine = x[rows]
        return (mine, mine) if t is x else (mine, t[rows])


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        plan = plan_modules(list(WIDTHS), WORLD)
        got = exchange_activations(_local(rank), plan, rank)
        save_file({k: v.contiguous() for k, v in got.items()}, f"{folder}/rank{rank}.safetensors")
        sources = {name: _Rows(i, width) for i, (name, width) in enumerate(WIDTHS.items())}
        exchange = ModuleExchange(sources, plan, rank)
        for step in (0, 1):  # the owner's batches are the sources' whole global batches, both tensors
            for name in exchange.owned:
                x, t = exchange.batch(name, step, WORLD * LOCAL_BATCH)
                want_x, want_t = sources[name].whole(step, WORLD * LOCAL_BATCH)
                assert torch.equal(x, want_x) and torch.equal(t, want_t) and t.dtype == want_t.dtype, name
                assert (t is x) == (want_t is want_x), name
        local_rows = {n: (LOCAL_BATCH, 2 * w + (0 if i % 2 else 2 * 3)) for i, (n, w) in enumerate(WIDTHS.items())}
        sent = sum(rows * width for n, (rows, width) in local_rows.items() if n not in exchange.owned) * 4
        assert exchange.exchanges == 2 and exchange.sent_bytes == 2 * sent  # fp32: the bf16 targets are promoted
    finally:
        dist.destroy_process_group()


def test_each_rank_receives_the_global_batch_of_its_targets() -> None:
    with tempfile.TemporaryDirectory() as folder:
        procs = [mp.get_context("spawn").Process(target=_worker, args=(r, folder)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        results = [load_file(f"{folder}/rank{r}.safetensors") for r in range(WORLD)]
    plan = plan_modules(list(WIDTHS), WORLD)
    assert [sorted(r) for r in results] == [sorted(owned) for owned in plan]  # no target trained twice
    assert sorted(t for r in results for t in r) == sorted(WIDTHS)  # and none left out
    for owned, got in zip(plan, results):
        for target in owned:
            expected = torch.cat([_local(r)[target] for r in range(WORLD)])  # the global batch, rank order
            assert torch.equal(got[target], expected), target


def test_plan_and_bytes() -> None:
    assert plan_modules([f"l{i}" for i in range(18)], 6) == [[f"l{3 * r + j}" for j in range(3)] for r in range(6)]
    with pytest.raises(ConfigError, match="at most 2 processes"):
        plan_modules(["a", "b"], 3)
    # a rank keeps 1/N of what it captured and sends the rest: 2 of 3 thirds of 4096 x 640 floats
    assert exchange_bytes({"a": (4096, 640)}, world=3) == 4096 * 640 * 4 * 2 // 3
