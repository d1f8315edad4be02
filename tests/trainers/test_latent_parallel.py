"""Latent sharding (trainers/latent_parallel.py) over gloo ranks trains the same dictionary as one process:
the building blocks on 2 spawned ranks, then the Trainer under torchrun (2 latent shards; a 2 x 2 DP x TP mesh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from scope_hub.errors import ConfigError
from scope_hub.testing.dictionaries import make_config, make_dictionary
from trainers.checkpoint import Checkpoint, commit_checkpoint, list_checkpoints, load_whole_checkpoint, save_shard
from trainers.distributed import DistContext
from trainers.forward import LayerParams, SparsitySpec, forward, layer_params
from trainers.latent_parallel import LatentGroup, forward_sharded, global_grad_norm, shard_range
from trainers.sources import SyntheticSource
from trainers.synthetic import PlantedDictionary

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
    _record_meshes(rank, world, folder)
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
        out = forward_sharded([lp], x.unsqueeze(1), spec, LatentGroup(rank, world), sparse=True)
        y, l0 = out.outputs[-1][:, 0], out.codes[0].l0_tokens
        _loss(y, x, l0, arch).backward()
        norm = global_grad_norm([p.grad for p in sharded if p.grad is not None], [shard["b_dec"].grad])
        scale = min(1.0, 1.0 / (float(norm) + 1e-6))
        for p in shard.values():
            if p.grad is not None:
                p.grad.mul_(scale)
        opt.step()
    save_file({n: p.detach().contiguous() for n, p in shard.items()}, f"{folder}/{arch}-rank{rank}.safetensors")


def _record_meshes(rank: int, world: int, folder: str) -> None:
    """What two trainers of one run (a multi-dictionary run) get from ``DistContext.mesh``."""
    ctx = DistContext(rank, world)
    (data_a, latents_a), (data_b, latents_b) = ctx.mesh(world), ctx.mesh(world)
    assert latents_a is not None and latents_b is not None
    record = {
        "same_group": latents_a.group is latents_b.group and data_a is data_b,
        "group_ranks": dist.get_process_group_ranks(latents_a.group),
        "latent_rank": latents_a.rank,
    }
    Path(folder, f"mesh-rank{rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def shard_results() -> dict[str, dict[int, dict]]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=_worker, args=(r, 2, folder)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
            assert p.exitcode == 0
        results = {a: {r: load_file(f"{folder}/{a}-rank{r}.safetensors") for r in range(2)} for a in ARCHS}
        results["mesh"] = {r: json.loads(Path(folder, f"mesh-rank{r}.json").read_text()) for r in range(2)}
        return results


def test_every_dictionary_of_a_run_shares_one_mesh(shard_results) -> None:
    meshes = shard_results["mesh"]
    assert [meshes[r]["latent_rank"] for r in range(2)] == [0, 1]
    for r in range(2):
        assert meshes[r]["same_group"] and meshes[r]["group_ranks"] == [0, 1]


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


# -- the Trainer under torchrun: latent-parallel and DP x TP runs against one process --------------------------

ROOT = Path(__file__).resolve().parents[2]
RUN_STEPS = 12


def _torchrun(config: Path, nproc: int, *overrides: str, timeout: float = 240) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    done = subprocess.run(
        [*cmd, "-m", "trainers", str(config), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _run_config(tmp: Path, arch: str, **train: object) -> Path:
    sparsity = {"k": 4} if arch == "topk" else {"l0_target": 6.0}
    cfg = {
        "synthetic": {"d_in": 32, "n_atoms": 128, "active_per_token": 6},
        "dictionary": {"architecture": arch, "d_sae": 512, **sparsity},
        "optim": {"lr": 1e-3, "warmup_steps": 3},
        # latents silent for one batch count as dead: aux-k (TopK) runs from the second step; the L0 penalty too
        "loss": {"dead_tokens": 512, "l0_warmup_steps": 4},
        "train": {
            "tokens": RUN_STEPS * 512,
            "batch_size": 512,
            "checkpoint_every": 1,
            "keep_checkpoints": RUN_STEPS,
            "threads": 1,
            "progress": False,
            "decode": "sparse",
            **train,
        },
        "eval": {"tokens": 0},
    }
    path = tmp / f"{arch}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _single_export(config: Path, tmp: Path) -> Path:
    """Train with one process (in this single-threaded process); its output folder."""
    from trainers.config import load_config
    from trainers.pipeline import train

    out = tmp / "one"
    train(
        load_config(
            config, [f"train.checkpoint_dir={tmp / 'one_ckpt'}", f"output.dir={out}", "train.latent_parallel=1"]
        )
    )
    return out


def _replay_every_step(config: Path, root: Path) -> Checkpoint:
    """Replay each step of a sharded run in one process from its previous (joined) checkpoint.

    Whole trajectories are not compared: summation order differs (partial decodes summed over
    shards, gradients over data slices), and after some steps a pre-activation within ~1e-7 of
    the TopK cut or the JumpReLU band edge takes the other branch (test_distributed.py). From the
    same state one step must agree to 1e-6. Returns the final joined checkpoint.
    """
    from trainers.config import load_config
    from trainers.pipeline import build_environment
    from trainers.trainer import Trainer

    found = list_checkpoints(root)
    assert [int(p.name.split("_")[1]) for p in found] == list(range(1, RUN_STEPS + 1))
    cfg = load_config(config, ["train.checkpoint_dir=null", "train.latent_parallel=1"])
    trainer = Trainer(cfg, build_environment(cfg, DistContext()).source)
    for step, path in enumerate(found):
        if step:
            trainer.load_state(load_whole_checkpoint(found[step - 1]))
        trainer.advance()
        got, expected = load_whole_checkpoint(path), trainer.state_tensors()
        assert got.state["density"] == pytest.approx(trainer.density, rel=1e-5)
        assert got.tensors.keys() == expected.keys()
        for name, value in expected.items():
            if name.startswith(("param/", "optim/", "state/")):
                torch.testing.assert_close(got.tensors[name], value, atol=1e-6, rtol=1e-5, msg=f"{name} @ {step}")
    return got


def _same_export(config: Path, sharded: Path, single: Path, final: Checkpoint) -> None:
    """The sharded run exported the ordinary single-file dictionary: its final weights, the unsharded layout."""
    from trainers.config import load_config
    from trainers.params import build_dictionary
    from trainers.publish import export_dictionary
    from trainers.trainer import TrainResult

    cfg = load_config(config, ["train.latent_parallel=1"])
    whole = build_dictionary(cfg, d_in=32, d_out=32, n_layers=1)
    with torch.no_grad():
        for name, param in whole.named_parameters():
            param.copy_(final.tensors[f"param/{name}"])
    result = TrainResult(whole, final.state["scale_in"], final.state["scale_out"], RUN_STEPS, False)
    expected = dict(export_dictionary(result, cfg, {}).named_parameters())
    got = load_file(str(sharded / "params.safetensors"))
    assert got.keys() == expected.keys() == load_file(str(single / "params.safetensors")).keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (sharded, single))
    for written in (ours, theirs):
        written.pop("provenance")
    assert ours == theirs
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in single.iterdir())


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_latent_parallel_trainer_matches_one_process(tmp_path: Path, arch: str) -> None:
    config = _run_config(tmp_path, arch, latent_parallel=2)
    _torchrun(config, 2, f"train.checkpoint_dir={tmp_path / 'lp_ckpt'}", f"output.dir={tmp_path / 'lp'}")
    final = _replay_every_step(config, tmp_path / "lp_ckpt")
    _same_export(config, tmp_path / "lp", _single_export(config, tmp_path), final)
    last = list_checkpoints(tmp_path / "lp_ckpt")[-1]
    assert sorted(p.name for p in last.iterdir()) == [
        "state.json",
        "tensors-00000-of-00002.safetensors",
        "tensors-00001-of-00002.safetensors",
    ]
    shard = load_file(str(last / "tensors-00001-of-00002.safetensors"))
    assert shard["param/w_dec"].shape == (256, 32) and shard["optim/w_enc/exp_avg_sq"].shape == (32, 256)


def test_dp_by_tp_mesh_matches_one_process(tmp_path: Path) -> None:
    config = _run_config(tmp_path, "topk", latent_parallel=2)
    _torchrun(config, 4, f"train.checkpoint_dir={tmp_path / 'mesh_ckpt'}", f"output.dir={tmp_path / 'mesh'}")
    final = _replay_every_step(config, tmp_path / "mesh_ckpt")
    _same_export(config, tmp_path / "mesh", _single_export(config, tmp_path), final)
    assert (final.state["world"], json.loads((final.path / "state.json").read_text())["latent_parallel"]) == (2, 2)


def test_resume_on_the_mesh_ignores_uncommitted_shards(tmp_path: Path) -> None:
    config = _run_config(tmp_path, "jumprelu", latent_parallel=2)
    _torchrun(config, 2, f"train.checkpoint_dir={tmp_path / 'full'}", f"output.dir={tmp_path / 'out_full'}")
    # A job killed after step 6's shards were written but before its commit marker: steps 1-5 committed.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    (cut / "step_000000006" / "state.json").unlink()
    for later in range(7, RUN_STEPS + 1):
        shutil.rmtree(cut / f"step_{later:09d}")
    with torch.no_grad():  # shard files of the uncommitted step are garbage: resuming from them would show
        shard = cut / "step_000000006" / "tensors-00000-of-00002.safetensors"
        save_file({k: torch.full_like(v, 7.0) for k, v in load_file(str(shard)).items()}, str(shard))
    assert list_checkpoints(cut)[-1].name == "step_000000005"
    _torchrun(config, 2, f"train.checkpoint_dir={cut}", f"output.dir={tmp_path / 'out_cut'}")
    for shard_index in range(2):
        name = f"tensors-{shard_index:05d}-of-00002.safetensors"
        expected = load_file(str(tmp_path / "full" / f"step_{RUN_STEPS:09d}" / name))
        got = load_file(str(cut / f"step_{RUN_STEPS:09d}" / name))
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, different  # the same mesh replays the same arithmetic: bitwise equal
    for name in ("params.safetensors", "config.json"):
        assert (tmp_path / "out_cut" / name).is_file()


def test_a_sharded_checkpoint_resumes_only_on_its_mesh(tmp_path: Path) -> None:
    from trainers.config import load_config
    from trainers.trainer import Trainer

    config = _run_config(tmp_path, "topk", latent_parallel=2)
    cfg = load_config(config, [f"train.checkpoint_dir={tmp_path / 'ckpt'}", "train.latent_parallel=1"])
    source = SyntheticSource(PlantedDictionary.create(n_atoms=128, d_in=32, active_per_token=6), seed=0)
    trainer = Trainer(cfg, source)
    hashes = [save_shard(tmp_path / "ckpt", 1, trainer.state_tensors(), r, 2) for r in range(2)]
    commit_checkpoint(tmp_path / "ckpt", 1, {**trainer.state_json(), "latent_parallel": 2}, hashes)
    with pytest.raises(ConfigError, match="same process count and train.latent_parallel"):
        Trainer(cfg, source)
    with pytest.raises(ConfigError, match="latent_parallel=2 needs a multiple of 2 processes"):
        Trainer(load_config(config, ["train.checkpoint_dir=null"]), source)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["dictionary.d_sae=100", "train.latent_parallel=3"], "divisible by train.latent_parallel=3"),
        (["dictionary.architecture=batchtopk", "dictionary.k=4"], "BatchTopK's batch-wide cut is not sharded"),
        (["dictionary.matryoshka_groups=[64,64]"], "does not split Matryoshka groups"),
        (["loss.resample_every=10"], "does not resample dead latents"),
    ],
)
def test_what_latent_parallelism_does_not_shard_is_refused(overrides: list[str], message: str) -> None:
    from trainers.config import load_config

    base = ["synthetic.d_in=8", "dictionary.d_sae=128", "dictionary.l0_target=4", "train.latent_parallel=2"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])
