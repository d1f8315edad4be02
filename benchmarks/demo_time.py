"""What ``make demo`` / ``make demo-quick`` cost: wall time and CPU-seconds, with the machine they ran on.

Runs ``python -m trainers.demo [--quick]`` in a fresh work folder and registry (so the
harvest, the training and the model load are all counted; the converted model itself
is reused from its cache, as on every run after the first), then, with ``--rerun``,
once more in the same folder: a rerun reuses the harvest and the finished checkpoints
and only evaluates and publishes again. CPU-seconds (user + system of the demo process
and its children) are the robust figure on a shared machine; wall time depends on the
load, which is printed before and after.

    .venv/bin/python -m benchmarks.demo_time --quick --rerun
    .venv/bin/python -m benchmarks.demo_time            # the full demo (~15-25 CPU-minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.device import add_device_argument  # noqa: E402


def machine() -> str:
    """CPU model and core count, as the README states them."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def timed_demo(args: list[str], log: Path) -> dict[str, float]:
    """Run the demo once (its output into ``log``); wall seconds, CPU-seconds of the process tree, peak RSS
    (MiB), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "w") as out:
        command = [sys.executable, "-m", "trainers.demo", *args]
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "max_rss_mib": after.ru_maxrss / 1024, "exit": float(done.returncode)}


PARTS = ("first-run", "rerun")
"""What ``--only`` can pick: the run in a fresh folder, and a rerun in the same folder."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="time `make demo-quick` instead of `make demo`")
    parser.add_argument("--rerun", action="store_true", help="also time a second run in the same folder")
    parser.add_argument("--work-dir", default=None, help="work folder (default: a fresh temporary one)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=None,
        help="runs to time (rerun alone: pass the --work-dir of a run)",
    )
    add_device_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device != "cpu":
        # The demo's trainer configs fix model.device to its default (cpu); timing it under
        # --device cuda would report CPU numbers as GPU ones.
        parser.error("--device cuda: the demo has no device option (trainers.demo runs on cpu); use --device cpu")
    only = args.only or (["first-run", "rerun"] if args.rerun else ["first-run"])
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scope-hub-demo-time-"))
    demo_args = ["--work-dir", str(work / "work"), "--registry", f"file://{work / 'registry'}"]
    demo_args += ["--quick"] if args.quick else []
    name = "make demo-quick" if args.quick else "make demo"
    print(f"{name} on {machine()}; Python {platform.python_version()}; work folder {work}", flush=True)
    runs = [{"first-run": "first run", "rerun": "rerun"}[part] for part in PARTS if part in only]
    failed = False
    for label in runs:
        load = os.getloadavg()[0]
        result = timed_demo(demo_args, work / f"{label.replace(' ', '_')}.log")
        print(
            f"  {label:<9}: {result['wall_s']:7.0f} s wall, {result['cpu_s']:7.0f} CPU-s, "
            f"peak RSS {result['max_rss_mib']:5.0f} MiB, exit {int(result['exit'])} "
            f"(load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; output: {work / label.replace(' ', '_')}.log)",
            flush=True,
        )
        failed = failed or result["exit"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
