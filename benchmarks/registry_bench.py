"""Registry benchmark: cold/warm pulls of 18 layer dictionaries, and ls/resolve on 20,000 keys.

Run: ``python -m benchmarks.registry_bench`` (real size: 18 x 640x16384 fp32 SAEs, ~84 MB each,
needs ~5 GB of disk in a temp folder) or ``--small`` (18 x 64x1024). The 20,000-key part runs on
file:// and on s3:// against a local moto server, and prints store requests next to times.

"Cold" pull = empty scope-hub cache (the OS page cache may still hold the registry's files:
we cannot drop it without root, so cold times here are CPU/disk-copy bound, not network bound).
Cold ``pull_many`` of the 18 keys is compared with a floor measured in the same run, alternating:
file:// = read + sha256 of the same blobs; s3:// = boto3 multi-part download of the same objects
into files + sha256; both with the same number of parallel transfers as ``pull_many``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from benchmarks.device import add_device_argument, check_device
from benchmarks.summary import Headline, add_summary_argument, write_summary
from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig
from scope_hub.registry import Registry
from scope_hub.registry.backend_interface import record_of
from scope_hub.registry.content import CHUNK, build_manifest, manifest_bytes, stage_folder
from scope_hub.registry.index import RegistryIndex, StoreIndex
from scope_hub.registry.layout import blob_path, manifest_path

LAYERS = 18
PULL_THREADS = 4
"""Parallel transfers of ``pull_many`` and of both floors."""
MODELS = [f"google/gemma-scope-bench-{i}" for i in range(10)]
SITES = ["resid_post", "attn_out", "mlp_out", "resid_pre", "mlp_in"]
WIDTHS = ["16k", "65k", "262k", "1m"]
VARIANTS = ["l0_small", "l0_medium", "l0_big", "l0_big_affine"]


def make_layer(folder: Path, layer: int, d_in: int, d_sae: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = DictionaryConfig(
        type="sae",
        architecture="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        model="google/gemma-3-270m",
        site="resid_post",
        layer=layer,
    )
    (folder / "config.json").write_text(cfg.model_dump_json())
    rng = np.random.default_rng(layer)
    save_file(
        {
            "w_enc": rng.random((d_in, d_sae), dtype=np.float32),
            "b_enc": np.zeros(d_sae, np.float32),
            "threshold": np.full(d_sae, 0.01, np.float32),
            "w_dec": rng.random((d_sae, d_in), dtype=np.float32),
            "b_dec": np.zeros(d_in, np.float32),
        },
        str(folder / "params.safetensors"),
    )
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\nBenchmark dictionary.\n")  # card source
    return folder


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def pull_setup(url: str, root: Path, small: bool) -> tuple[list[str], float, str]:
    """Push the 18 layer dictionaries to ``url``; returns (pinned keys, push seconds, label)."""
    d_in, d_sae = (64, 1024) if small else (640, 16384)
    width = "1k" if small else "16k"  # push checks the key's width against d_sae
    keys = [f"google/gemma-3-270m:resid_post/layer_{i}/width_{width}/sae" for i in range(LAYERS)]
    folders = [make_layer(root / "src" / f"layer_{i}", i, d_in, d_sae) for i in range(LAYERS)]
    size = sum((f / "params.safetensors").stat().st_size for f in folders)
    push_s, _ = timed(lambda: [Registry(url, progress=False).push(f, k) for f, k in zip(folders, keys)])
    shutil.rmtree(root / "src")
    return [f"{k}@v1" for k in keys], push_s, f"{LAYERS} x {d_in}x{d_sae} fp32 ({size / 1e6:.0f} MB)"


def blob_names(url: str, pins: list[str]) -> list[str]:
    """Store paths of every file of the pinned versions (what a cold pull transfers)."""
    reg = Registry(url, progress=False)
    return sorted({blob_path(e.sha256) for pin in pins for e in reg.resolve(pin).files})


def file_sha256(path: Path) -> str:
    """sha256 of a file read in CHUNK pieces, as the floors' reference reader does."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_floor(url: str, pins: list[str], threads: int) -> float:
    """Seconds to read and sha256 every blob of the pins from the file:// registry, ``threads`` at a time."""
    base = Path(url.removeprefix("file://"))
    paths = [base / name for name in blob_names(url, pins)]

    with ThreadPoolExecutor(threads) as pool:
        return timed(lambda: list(pool.map(file_sha256, paths)))[0]


def s3_floor(url: str, pins: list[str], threads: int, tmp: Path) -> float:
    """Seconds for boto3 downloads of every blob of the pins into files (8 MB multi-part ranges),
    ``threads`` objects at a time, and the sha256 of each."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=1)
    names = blob_names(url, pins)
    target = tmp / "s3-floor"
    target.mkdir(exist_ok=True)

    def download(i: int) -> str:
        path = target / str(i)
        client.download_file(bucket, f"{prefix}/{names[i]}", str(path), Config=config)
        return file_sha256(path)

    with ThreadPoolExecutor(threads) as pool:
        seconds = timed(lambda: list(pool.map(download, range(len(names)))))[0]
    shutil.rmtree(target)
    return seconds


def cold_vs_floor(name: str, url: str, pins: list[str], floor: Callable[[], float], root: Path, repeats: int):
    """Cold ``pull_many`` (a fresh cache each time) and the floor, alternating; per-repeat times."""
    ours, floors = [], []
    for r in range(repeats):
        cache = root / f"cache-{name}-{r}"
        reg = Registry(url, cache_dir=cache, progress=False)
        ours.append(timed(lambda reg=reg: reg.pull_many(pins, threads=PULL_THREADS))[0])
        shutil.rmtree(cache)
        floors.append(floor())
    return ours, floors


def bench_pulls(root: Path, small: bool, repeats: int) -> list[Headline]:
    url = (root / "pull-registry").as_uri()
    pins, push_s, what = pull_setup(url, root, small)
    cold = Registry(url, cache_dir=root / "cache", progress=False)
    cold_s, _ = timed(lambda: [cold.pull(p) for p in pins])
    warm_runs, reads = [], []
    for _ in range(5):
        warm = Registry(url, cache_dir=root / "cache", progress=False)
        warm_runs.append(timed(lambda warm=warm: [warm.pull(p) for p in pins])[0])
        reads.append(warm.backend.requests())
    keys = [p.removesuffix("@v1") for p in pins]
    latest = Registry(url, cache_dir=root / "cache", progress=False)
    latest_s, _ = timed(lambda: [latest.pull(k) for k in keys])
    ours, floors = cold_vs_floor("file", url, pins, lambda: file_floor(url, pins, PULL_THREADS), root, repeats)
    print(f"pull: {what}, file:// registry")
    print(f"  push (hash + copy into registry)   {push_s:7.3f} s")
    print(f"  cold pull @v1 (empty cache)        {cold_s:7.3f} s   store requests {cold.backend.requests()}")
    print(
        f"  cold pull_many @v1, {PULL_THREADS} transfers     {statistics.median(ours):7.3f} s   "
        f"floor (read + sha256, {PULL_THREADS} threads) {statistics.median(floors):.3f} s"
    )
    print(
        f"  warm pull @v1 (median of 5)        {statistics.median(warm_runs) * 1000:7.2f} ms  store requests {max(reads)}"
    )
    print(f"  warm pull @latest                  {latest_s * 1000:7.2f} ms  store requests {latest.backend.requests()}")
    return [
        Headline(
            "registry",
            "cold pull, 18 layer SAEs @v1",
            cold_s,
            unit="s",
            note=f"{what}; one key after another; download + sha256 + snapshot, {cold.backend.requests()} requests",
        ),
        Headline(
            "registry",
            "cold pull_many / floor, file://",
            statistics.median(o / f for o, f in zip(ours, floors)),
            goal="<= 1.2",
            note=f"{what}; floor = read + sha256 of the same blobs, {PULL_THREADS} threads (page cache warm)",
        ),
        Headline(
            "registry",
            "warm pull, 18 layer SAEs @v1",
            statistics.median(warm_runs) * 1000,
            unit="ms",
            note=f"{max(reads)} store requests (pinned versions are immutable)",
        ),
    ]


def bench_s3_pulls(url: str, root: Path, small: bool, repeats: int) -> list[Headline]:
    pins, push_s, what = pull_setup(url, root, small)
    ours, floors = cold_vs_floor("s3", url, pins, lambda: s3_floor(url, pins, PULL_THREADS, root), root, repeats)
    print(f"pull: {what}, s3:// (moto server on 127.0.0.1), push {push_s:.1f} s")
    print(
        f"  cold pull_many @v1, {PULL_THREADS} transfers     {statistics.median(ours):7.3f} s   "
        f"floor (boto3 multi-part downloads + sha256, {PULL_THREADS} at a time) {statistics.median(floors):.3f} s"
    )
    return [
        Headline(
            "registry",
            "cold pull_many / floor, s3:// (moto)",
            statistics.median(o / f for o, f in zip(ours, floors)),
            goal="<= 1.2",
            note=f"{what}; floor = boto3 download_file (8 MB parts) + sha256 of the same objects, {PULL_THREADS} at a time",
        )
    ]


def all_keys() -> list[str]:
    return [
        f"{m}:{s}/layer_{layer}/width_{w}/sae/{v}"
        for m in MODELS
        for s in SITES
        for layer in range(25)
        for w in WIDTHS
        for v in VARIANTS
    ]


def build_big_registry(reg: Registry, keys: list[str], tmp: Path) -> None:
    """20,000 keys, one version each, written directly (one tiny shared blob set) plus an index snapshot.

    Setup only (not timed as a registry operation): pushing 20,000 times would mostly measure
    hashing the same tiny folder 20,000 times.
    """
    folder = make_layer(tmp / "tiny", 0, 4, 8)
    store = reg.backend.store
    # staged once under the key its config.json implies, then listed under every benchmark key (the
    # manifests are what listing reads; the shared blobs only need to exist)
    staged = stage_folder(folder, parse_key("google/gemma-3-270m:resid_post/layer_0/width_8/sae"))
    for f in staged.files:
        store.put_file(blob_path(f.sha256), f.local)
    card = staged.render_card(1)  # one card blob shared by every key (rendering 20,000 cards is not the point)
    store.put_bytes(blob_path(card.sha256), card.data)
    index, payload = RegistryIndex(), {}
    for text in keys:
        manifest = build_manifest(dataclasses.replace(staged, key=parse_key(text)), 1, card)
        data = manifest_bytes(manifest)
        payload[manifest_path(parse_key(text), 1)] = data
        index.add(text, record_of(manifest, data))
    if reg.url.startswith("s3://"):
        store.fs.pipe({store.full(p): d for p, d in payload.items()})  # concurrent PUTs
    else:
        for path, data in payload.items():
            target = store.base / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    StoreIndex(store)._write_snapshot(index, 1, [])


def bench_listing(name: str, url: str, tmp: Path, reindex: bool) -> list[Headline]:
    keys = all_keys()
    builder = Registry(url, cache_dir=tmp / f"{name}-build-cache", progress=False)
    build_s, _ = timed(lambda: build_big_registry(builder, keys, tmp))
    for i in range(10):  # ten ordinary pushes on top: ten pending index segments
        builder.push(make_layer(tmp / f"extra_{i}", i, 4, 8), f"google/gemma-3-270m:resid_post/layer_{i}/width_8/sae")
    print(f"\n{name}: {len(keys) + 10:,} keys (built in {build_s:.1f} s)")
    reg = Registry(url, cache_dir=tmp / f"{name}-cache", progress=False)
    store = reg.backend.store
    rows = []
    for label, action in [
        ("ls (all keys)", lambda: reg.list()),
        ("ls 'google/gemma-scope-bench-3:attn_out/*'", lambda: reg.list("google/gemma-scope-bench-3:attn_out/*")),
        ("resolve KEY (latest, cold cache)", lambda: reg.resolve(keys[12345])),
        ("resolve KEY@v1 (manifest cached)", lambda: reg.resolve(keys[12345] + "@v1")),
        (
            "resolve KEY@sha256:<prefix>",
            lambda: reg.resolve(f"{keys[777]}@sha256:" + reg.resolve(keys[777] + "@v1").content_sha256[:12]),
        ),
    ]:
        before = store.reads
        seconds, out = timed(action)
        count = f"{len(out):,} keys" if isinstance(out, list) else f"v{out.version}"
        print(f"  {label:<46} {seconds * 1000:8.1f} ms  store reads {store.reads - before:3d}  ({count})")
        if label == "ls (all keys)":
            rows.append(
                Headline(
                    "registry",
                    f"ls of {len(keys) + 10:,} keys, {name.split()[0]}",
                    seconds * 1000,
                    unit="ms",
                    note=f"{store.reads - before} store reads",
                )
            )
    if reindex:
        seconds, n = timed(reg.reindex)
        print(f"  reindex (reads every manifest)                 {seconds:8.1f} s   ({n:,} versions)")
    return rows


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-registry")
    return server, "s3://bench-registry/registry"


PARTS = ("file-pulls", "file-listing", "s3-pulls", "s3-listing")
"""What ``--only`` can pick: pulls and the 20,000-key listing, over file:// and over s3:// (moto)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="18 x 64x1024 dictionaries instead of 640x16384")
    parser.add_argument(
        "--skip-s3", action="store_true", help="skip the moto part (same as leaving s3-* out of --only)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="cold pull_many / floor pairs")
    parser.add_argument(
        "--only-pulls", action="store_true", help="skip the 20,000-key listing part (same as leaving *-listing out)"
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    # Registry work moves bytes and hashes them: no tensor math runs, so the device changes nothing
    # measured; the flag is accepted (and cuda refused without a GPU) so every benchmark takes it.
    add_device_argument(parser)
    add_summary_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    parts = set(args.only) - ({"file-listing", "s3-listing"} if args.only_pulls else set())
    parts -= {"s3-pulls", "s3-listing"} if args.skip_s3 else set()
    os.environ.setdefault("CI", "1")  # no progress bars in benchmark output
    rows: list[Headline] = []
    with tempfile.TemporaryDirectory(prefix="scope-hub-bench-") as tmp:
        root = Path(tmp)
        if "file-pulls" in parts:
            rows += bench_pulls(root, args.small, args.repeats)
        if "file-listing" in parts:
            rows += bench_listing("file://", (root / "big-registry").as_uri(), root, reindex=True)
        if parts & {"s3-pulls", "s3-listing"}:
            server, url = start_moto()
            try:
                if "s3-pulls" in parts:
                    rows += bench_s3_pulls(url.replace("/registry", "/pulls"), root, args.small, args.repeats)
                if "s3-listing" in parts:
                    rows += bench_listing("s3:// (moto on 127.0.0.1)", url, root, reindex=False)
            finally:
                server.stop()
    write_summary(args.summary, rows)


if __name__ == "__main__":
    main()
