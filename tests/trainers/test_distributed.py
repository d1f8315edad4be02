"""Two-process data-parallel training (torchrun, gloo) takes the single-process step on the same global batches."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainers.checkpoint import list_checkpoints, load_checkpoint
from trainers.distributed import DistContext

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _standalone(nproc: int, config: Path, *overrides: str) -> list[str]:
    """``torchrun --standalone`` of ``nproc`` trainer processes on ``config`` with ``overrides``."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [*launch, "-m", "trainers", str(config), *overrides]


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_two_ranks_match_one_process(tmp_path: Path, arch: str) -> None:
    """Every step of a 2-rank run equals the single-process step from the same state.

    Whole trajectories cannot be compared entry by entry: the two runs differ only in summation
    order (two half-batch gradient sums plus an all-reduce, ~1e-8), but JumpReLU's STE band and
    BatchTopK's cut are discontinuous, and once a pre-activation lands within ~1e-8 of an edge the
    runs take different branches (measured on main: 20 steps agree to 2e-7, after 30 steps 9% of
    thresholds differ, after 40 nearly every entry; a single process fed the same batches with
    their rows reversed diverges identically). So the 2-rank run checkpoints every step and each
    of its steps is replayed here by one process from its own previous checkpoint: any missing or
    wrong reduction (L0, BatchTopK's pool and threshold, dead counts, gradients) shows at once.
    """
    sparsity = {"l0_target": 6.0} if arch == "jumprelu" else {"k": 6}
    cfg = {
        "synthetic": {"d_in": 32, "n_atoms": 128, "active_per_token": 6},
        # sparse decode: the gather/scatter kernels and BatchTopK's cross-rank threshold are exercised
        "dictionary": {"architecture": arch, "d_sae": 256, **sparsity},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "loss": {"dead_tokens": 2048, "l0_warmup_steps": 10},
        "train": {
            "tokens": STEPS * 1024,
            "batch_size": 1024,
            "checkpoint_every": 1,
            "keep_checkpoints": STEPS,
            "threads": 1,
            "progress": False,
            "decode": "sparse",
        },
        "eval": {"tokens": 0},
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    two = [f"train.checkpoint_dir={tmp_path / 'two'}", f"output.dir={tmp_path / 'out2'}"]
    _run(_standalone(2, config, *two))
    from trainers.config import load_config
    from trainers.pipeline import build_environment
    from trainers.trainer import Trainer

    ddp = list_checkpoints(tmp_path / "two")
    assert [int(p.name.split("_")[1]) for p in ddp] == list(range(1, STEPS + 1))
    single_cfg = load_config(config, ["train.checkpoint_dir=null"])
    trainer = Trainer(single_cfg, build_environment(single_cfg, DistContext()).source)
    for step, path in enumerate(ddp):
        if step:
            trainer.load_state(load_checkpoint(ddp[step - 1]))
        trainer.advance()
        expected, got = trainer.state_tensors(), load_checkpoint(path)
        assert got.state["world"] == 2 and got.state["step"] == trainer.step == step + 1
        assert got.state["threshold_ready"] == trainer.threshold_ready
        assert got.state["density"] == pytest.approx(trainer.density, rel=1e-5)
        for name, value in expected.items():
            if name.startswith(("param/", "optim/", "state/")):
                torch.testing.assert_close(got.tensors[name], value, atol=1e-6, rtol=1e-5, msg=f"{name} @ {step}")
    assert (tmp_path / "out2" / "params.safetensors").is_file()  # rank 0 exported


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mesh_config(tmp: Path, steps: int, every: int) -> Path:
    cfg = {
        "synthetic": {"d_in": 16, "n_atoms": 64, "active_per_token": 4},
        "dictionary": {"architecture": "topk", "d_sae": 128, "k": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {
            "tokens": steps * 256,
            "batch_size": 256,
            "checkpoint_every": every,
            "threads": 1,
            "progress": False,
            "latent_parallel": 2,
        },
        "eval": {"tokens": 0},
    }
    path = tmp / "mesh.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _final_shards(root: Path) -> dict[str, torch.Tensor]:
    last = list_checkpoints(root)[-1]
    return {f"{r}/{k}": v for r in range(2) for k, v in load_checkpoint(last, r).tensors.items()}


def test_two_nodes_on_localhost_match_one_node(tmp_path: Path) -> None:
    """``torchrun --nnodes 2`` with c10d rendezvous: two launchers of 2 processes = one of 4, bitwise."""
    config = _mesh_config(tmp_path, steps=6, every=3)
    _run(_standalone(4, config, f"train.checkpoint_dir={tmp_path / 'one_node'}", f"output.dir={tmp_path / 'out1'}"))
    endpoint = f"127.0.0.1:{_free_port()}"
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        "two-nodes",
        "-m",
        "trainers",
        str(config),
        f"train.checkpoint_dir={tmp_path / 'two_nodes'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*launch, f"output.dir={tmp_path / f'out_node{n}'}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for n in range(2)
    ]
    try:
        for node in nodes:
            _, err = node.communicate(timeout=240)
            assert node.returncode == 0, err.decode()[-3000:]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)  # the launcher and its workers: this test's processes only
    expected, got = _final_shards(tmp_path / "one_node"), _final_shards(tmp_path / "two_nodes")
    assert expected.keys() == got.keys()
    assert not [k for k in expected if not torch.equal(expected[k], got[k])]
    exported = [n for n in range(2) if (tmp_path / f"out_node{n}" / "params.safetensors").is_file()]
    assert len(exported) == 1  # only the node that holds rank 0 writes the output
