"""Latent sharding over 2 gloo ranks trains the same dictionary as one process (trainers/sharding.py)."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scope_hub.testing.dictionaries import make_config, make_dictionary
from trainers.forward import LayerParams, SparsitySpec, forward, layer_params
from trainers.sharding import global_grad_norm, shard_range, sharded_forward

STEPS, BATCH, D, S = 8, 256, 16, 64
ARCHS = ("topk", "jumprelu")


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, D, generator=gen) for _ in range(STEPS)]


def _loss(y, x, l0_tokens, arch):
    loss = (y - x).pow(2).sum(-1).mean()
    if arch == "jumprelu":
        loss = loss + 0.1 * (2 / 8.0) * (l0_tokens - 8.0).pow(2).mean()
    return loss


def _reference(arch: str) -> dict[str, torch.Tensor]:
    dictionary = make_dictionary(make_config("sae", arch, d_in=D, d_sae=S, k=6), seed=4)
    params = [p for p in dictionary.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2, betas=(0.0, 0.999))
    spec = SparsitySpec(arch, k=6, bandwidth=0.05)
    for x in _batches():
        opt.zero_grad()
        out = forward(layer_params(dictionary), x.unsqueeze(1), spec, sparse=True)
        _loss(out.outputs[-1][:, 0], x, out.codes[0].l0_tokens, arch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return {n: p.detach().clone() for n, p in dictionary.named_parameters()}


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    for arch in ARCHS:
        _train_shard(rank, world, folder, arch)
    dist.barrier()
    dist.destroy_process_group()


def _train_shard(rank: int, world: int, folder: str, arch: str) -> None:
    full = make_dictionary(make_config("sae", arch, d_in=D, d_sae=S, k=6), seed=4)
    lo, hi = shard_range(S, rank, world)
    shard = {
        n: torch.nn.Parameter(
            p.detach()[..., lo:hi].clone()
            if n in ("w_enc",)
            else p.detach()[lo:hi].clone()
            if n in ("b_enc", "threshold", "w_dec")
            else p.detach().clone()
        )
        for n, p in full.named_parameters()
    }
    lp = LayerParams(shard["w_enc"], shard["b_enc"], shard.get("threshold"), shard["w_dec"], shard["b_dec"], None)
    sharded = [p for n, p in shard.items() if n != "b_dec"]
    opt = torch.optim.Adam(list(shard.values()), lr=1e-2, betas=(0.0, 0.999))
    spec = SparsitySpec(arch, k=6, bandwidth=0.05)
    for x in _batches():
        opt.zero_grad()
        y, l0 = sharded_forward(lp, x, spec)
        _loss(y, x, l0, arch).backward()
        norm = global_grad_norm([p.grad for p in sharded if p.grad is not None], [shard["b_dec"].grad])
        scale = min(1.0, 1.0 / (float(norm) + 1e-6))
        for p in shard.values():
            if p.grad is not None:
                p.grad.mul_(scale)
        opt.step()
    save_file({n: p.detach().contiguous() for n, p in shard.items()}, f"{folder}/{arch}-rank{rank}.safetensors")


@pytest.fixture(scope="module")
def shard_results() -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=_worker, args=(r, 2, folder)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
            assert p.exitcode == 0
        return {a: {r: load_file(f"{folder}/{a}-rank{r}.safetensors") for r in range(2)} for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_two_latent_shards_match_one_process(arch: str, shard_results) -> None:
    results = shard_results[arch]
    expected = _reference(arch)
    for name, value in expected.items():
        if name == "w_enc":
            got = torch.cat([results[0][name], results[1][name]], dim=1)
        elif name == "b_dec":
            got = results[0][name]
            torch.testing.assert_close(results[1][name], got)  # replicated, and kept identical
        else:
            got = torch.cat([results[0][name], results[1][name]], dim=0)
        torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-4, msg=name)
