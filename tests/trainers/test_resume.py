"""kill -9 (or SIGTERM) then resume reaches bitwise the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainers.checkpoint import latest_checkpoint, list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
STEPS = 150


def _config(tmp: Path, name: str, arch: str) -> Path:
    sparsity = {"k": 8} if arch == "topk" else {"l0_target": 8.0}
    cfg = {
        "synthetic": {"d_in": 32, "n_atoms": 128, "active_per_token": 6},
        "dictionary": {"architecture": arch, "d_sae": 256, **sparsity},
        "optim": {"lr": 3e-3, "warmup_steps": 10},
        "loss": {"dead_tokens": 4096},  # so the aux-k path (TopK) is exercised before the kill
        "train": {
            "tokens": STEPS * 1024,
            "batch_size": 1024,
            "checkpoint_dir": str(tmp / name / "ckpt"),
            "checkpoint_every": 10,
            "keep_checkpoints": 2,
            "threads": 1,
            "progress": False,
            "seed": 3,
        },
        "eval": {"tokens": 0},
        "output": {"dir": str(tmp / name / "out")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainers", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_checkpoint(root: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list_checkpoints(root)
        if found and int(found[-1].name.split("_")[1]) >= min_step:
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _final_state(root: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(root)
    assert ckpt.state["step"] == STEPS
    return {k: v for k, v in ckpt.tensors.items() if k.startswith(("param/", "optim/", "state/"))}


def _kill_and_resume(tmp: Path, name: str, arch: str, sig: signal.Signals) -> int:
    """Start a run in a subprocess, hit it with ``sig`` after its second checkpoint, resume it in this
    (single-threaded) process; returns the step it stopped at."""
    config = _config(tmp, name, arch)
    victim = _start(config)
    _wait_for_checkpoint(tmp / name / "ckpt", victim, min_step=20)
    victim.send_signal(sig)
    code = victim.wait(timeout=60)
    stopped_at = latest_checkpoint(tmp / name / "ckpt").state["step"]
    assert stopped_at < STEPS, "the run finished before it was killed; the test proves nothing"
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)  # SIGTERM: checkpoint, exit on its own
    from trainers.config import load_config
    from trainers.pipeline import train

    assert not train(load_config(config)).interrupted  # resumed here, from the newest checkpoint
    return stopped_at


@pytest.mark.parametrize("arch,signals", [("topk", [signal.SIGKILL, signal.SIGTERM]), ("jumprelu", [signal.SIGKILL])])
def test_resume_after_kill_reaches_the_same_weights(tmp_path: Path, arch: str, signals: list) -> None:
    # The uninterrupted reference runs in this process (single-threaded, like the subprocesses).
    from trainers.config import load_config
    from trainers.pipeline import train

    assert not train(load_config(_config(tmp_path, "reference", arch))).interrupted
    stops = {sig.name: _kill_and_resume(tmp_path, f"victim_{sig.name}", arch, sig) for sig in signals}
    expected = _final_state(tmp_path / "reference" / "ckpt")
    for sig in signals:
        got = _final_state(tmp_path / f"victim_{sig.name}" / "ckpt")
        assert expected.keys() == got.keys()
        different = [k for k in expected if not torch.equal(expected[k], got[k])]
        assert not different, f"{sig.name} at step {stops[sig.name]}, resumed: differs in {different}"


# -- kill -9 of one rank of a torchrun job (2 latent shards) -----------------------------------------------------

MESH_STEPS = 300
STOP_BOUND_S = 60
"""A job with a killed rank must be gone within this (torchrun notices the dead worker and ends the rest;
the survivors' collectives fail at once on the closed connection)."""


def _mesh_config(tmp: Path, name: str) -> list[str]:
    cfg = {
        "synthetic": {"d_in": 16, "n_atoms": 64, "active_per_token": 4},
        "dictionary": {"architecture": "jumprelu", "d_sae": 128, "l0_target": 4.0},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "loss": {"l0_warmup_steps": 20},
        "train": {
            "tokens": MESH_STEPS * 256,
            "batch_size": 256,
            "checkpoint_every": 10,
            "threads": 1,
            "progress": False,
            "latent_parallel": 2,
            "checkpoint_dir": str(tmp / name / "ckpt"),
        },
        "eval": {"tokens": 0},
        "output": {"dir": str(tmp / name / "out")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _launch(tmp: Path, name: str, *torchrun_args: str) -> subprocess.Popen:
    cmd = _mesh_config(tmp, name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*cmd, *torchrun_args, "-m", "trainers", str(tmp / f"{name}.yaml")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err.decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own session: only what this test started


def _kill_one_worker(launcher: subprocess.Popen) -> None:
    workers = subprocess.run(["ps", "--ppid", str(launcher.pid), "-o", "pid="], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split()]
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)


def _mesh_final(root: Path) -> dict[str, torch.Tensor]:
    ckpt_dir = list_checkpoints(root)[-1]
    assert ckpt_dir.name == f"step_{MESH_STEPS:09d}"
    from trainers.checkpoint import load_checkpoint

    return {f"{r}/{k}": v for r in range(2) for k, v in load_checkpoint(ckpt_dir, r).tensors.items()}


@pytest.fixture(scope="module")
def mesh_reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final shards of an uninterrupted 2-rank latent-parallel run."""
    tmp = tmp_path_factory.mktemp("mesh_reference")
    code, err = _finish(_launch(tmp, "reference"), 240)
    assert code == 0, err
    return _mesh_final(tmp / "reference" / "ckpt")


@pytest.mark.parametrize("restarts", [0, 1])
def test_kill_9_of_one_rank_stops_the_job_and_resumes_to_the_same_weights(
    tmp_path: Path, restarts: int, mesh_reference: dict[str, torch.Tensor]
) -> None:
    victim = _launch(tmp_path, "victim", "--max-restarts", str(restarts))
    _wait_for_checkpoint(tmp_path / "victim" / "ckpt", victim, min_step=20)
    _kill_one_worker(victim)
    killed_at = time.time()
    code, err = _finish(victim, 240)
    stopped_after = time.time() - killed_at
    if restarts == 0:
        assert code != 0 and stopped_after < STOP_BOUND_S, (code, stopped_after)
        assert latest_checkpoint(tmp_path / "victim" / "ckpt").state["step"] < MESH_STEPS, "finished before the kill"
        code, err = _finish(_launch(tmp_path, "victim"), 240)  # the same command again: resumes
    assert code == 0, err  # with --max-restarts 1 torchrun restarted the workers, which resumed by themselves
    expected, got = mesh_reference, _mesh_final(tmp_path / "victim" / "ckpt")
    different = [k for k in expected if k.split("/")[1] != "rng" and not torch.equal(expected[k], got[k])]
    assert not different, different
