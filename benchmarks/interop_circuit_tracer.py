"""Check scope-hub's circuit-tracer export against circuit-tracer's own loaders (outside the test suite).

circuit-tracer 0.5.0 pins transformers < 5, so it lives in its own venv. This script runs in two
halves: the first (scope-hub's venv) exports random transcoder sets and CLTs with
``scope_hub.interop.circuit_tracer`` and records our features and outputs on fixed inputs; the
second (circuit-tracer's venv, started as a subprocess, no scope-hub import) loads the folders
with circuit-tracer's loaders (``load_transcoder_set``, ``load_relu_transcoder`` lazy, ``load_clt``
eager and lazy) and compares encodings and outputs, then writes random transcoders and a CLT
with circuit-tracer's own ``to_safetensors``; a third step reads those back with scope-hub and
compares again. Exit status 0 when everything agrees.

Set up once, then run::

    python3 -m venv /tmp/ct-venv
    /tmp/ct-venv/bin/pip install torch==2.13.0          # first, so the CPU wheel is kept
    /tmp/ct-venv/bin/pip install circuit-tracer==0.5.0
    .venv/bin/python benchmarks/interop_circuit_tracer.py --ct-python /tmp/ct-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RTOL = 1e-6
"""Agreement needed: max |difference| <= RTOL * max(1, max |expected|) (float32 summation order differs)."""


def _close(diff: float, expected: torch.Tensor) -> bool:
    return diff <= RTOL * max(1.0, expected.abs().max().item())


N_POS, D_MODEL, D_SAE = 11, 16, 32


def export_cases(work: Path) -> list[dict]:
    """First half (scope-hub venv): export dictionaries and record what scope-hub computes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scope_hub.interop import circuit_tracer
    from scope_hub.testing.dictionaries import make_config, make_dictionary

    cases = []
    gen = torch.Generator().manual_seed(0)
    for name, type_, arch, n in [
        ("set_jumprelu", "transcoder", "jumprelu", 3),
        ("set_relu", "transcoder", "relu", 3),
        ("set_skip_jumprelu", "skip_transcoder", "jumprelu", 2),
        ("clt_jumprelu", "clt", "jumprelu", 4),
        ("clt_relu", "clt", "relu", 3),
    ]:
        x = torch.randn(n, N_POS, D_MODEL, generator=gen)
        out = work / name
        if type_ == "clt":
            module = make_dictionary(
                make_config(
                    "clt", arch, d_in=D_MODEL, d_sae=D_SAE, d_out=D_MODEL, n_layers=n, site="mlp_in", site_out="mlp_out"
                ),
                seed=1,
            ).eval()
            circuit_tracer.save(module, out)
            ours = x.transpose(0, 1)  # ours stacks layers on axis -2
            features, outputs = module.encode(ours).transpose(0, 1), module(ours).transpose(0, 1)
        else:
            modules = {
                f"layer_{i}": make_dictionary(
                    make_config(
                        type_,
                        arch,
                        d_in=D_MODEL,
                        d_sae=D_SAE,
                        d_out=D_MODEL,
                        layer=i,
                        site="mlp_in",
                        site_out="mlp_out",
                    ),
                    seed=10 + i,
                ).eval()
                for i in range(n)
            }
            circuit_tracer.save_all(modules, out)
            features = torch.stack([m.encode(x[i]) for i, m in enumerate(modules.values())])
            outputs = torch.stack([m(x[i]) for i, m in enumerate(modules.values())])
        save_file(
            {"x": x, "features": features.contiguous(), "outputs": outputs.contiguous()},
            str(work / f"{name}.expected.safetensors"),
        )
        cases.append({"name": name, "kind": type_, "n_layers": n})
    return cases


def check_cases(work: Path, cases: list[dict]) -> dict:
    """Second half (circuit-tracer venv): load with circuit-tracer and compare."""
    import circuit_tracer
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder, load_transcoder_set

    cpu = torch.device("cpu")
    results = {"circuit_tracer_version": circuit_tracer.__version__, "torch": torch.__version__}
    for case in cases:
        name, folder = case["name"], work / case["name"]
        expected = load_file(str(work / f"{name}.expected.safetensors"))
        x = expected["x"]
        runs = {}
        if case["kind"] == "clt":
            for lazy in (False, True):
                clt = load_clt(str(folder), device=cpu, dtype=torch.float32, lazy_decoder=lazy, lazy_encoder=lazy)
                features = clt.encode(x)
                outputs = clt.forward(x)
                runs[f"load_clt(lazy={lazy})"] = (features, outputs)
        else:
            paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(case["n_layers"])}
            ts = load_transcoder_set(
                paths,
                scan=name,
                feature_input_hook="mlp.hook_in",
                feature_output_hook="hook_mlp_out",
                device=cpu,
                dtype=torch.float32,
                lazy_encoder=False,
                lazy_decoder=False,
            )
            features = ts.encode(x)
            runs["load_transcoder_set"] = (features, ts.decode(features, x))
            lazy = [load_relu_transcoder(paths[i], i, device=cpu, dtype=torch.float32) for i in paths]
            lazy_features = torch.stack([t.encode(x[i]) for i, t in enumerate(lazy)])
            runs["load_relu_transcoder(lazy)"] = (
                lazy_features,
                torch.stack([t.decode(lazy_features[i], x[i]) for i, t in enumerate(lazy)]),
            )
        for label, (features, outputs) in runs.items():
            df = (features.float() - expected["features"]).abs().max().item()
            do = (outputs.float() - expected["outputs"]).abs().max().item()
            same_active = bool(((features != 0) == (expected["features"] != 0)).all())
            results[f"{name} / {label}"] = {
                "max_abs_feature_diff": df,
                "max_abs_output_diff": do,
                "same_active_latents": same_active,
                "ok": _close(df, expected["features"]) and _close(do, expected["outputs"]) and same_active,
            }
    results["native_cases"] = export_native(work)
    return results


def export_native(work: Path) -> list[dict]:
    """Second half, continued: folders written by circuit-tracer's own ``to_safetensors``."""
    import torch.nn.functional as F
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    gen, cpu, cases = torch.Generator().manual_seed(1), torch.device("cpu"), []
    n = 3
    x = torch.randn(n, N_POS, D_MODEL, generator=gen)
    layers = {}
    for i in range(n):
        act = JumpReLU(torch.rand(D_SAE, generator=gen) * 0.5, 0.1) if i != 1 else F.relu
        t = SingleLayerTranscoder(D_MODEL, D_SAE, act, i, skip_connection=True, device=cpu, dtype=torch.float32)
        for p in t.parameters():
            p.data.normal_(generator=gen)
        if i != 1:
            t.activation_function.threshold.data = torch.rand(D_SAE, generator=gen) * 0.5
        layers[i] = t
    ts = TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out")
    ts.to_safetensors(str(work / "native_set"))
    features = torch.stack([ts[i].encode(x[i]) for i in range(n)]).detach()
    outputs = torch.stack([ts[i].decode(features[i], x[i]) for i in range(n)]).detach()
    save_file({"x": x, "features": features, "outputs": outputs}, str(work / "native_set.expected.safetensors"))
    cases.append({"name": "native_set", "kind": "transcoder", "n_layers": n})
    clt = CrossLayerTranscoder(
        n, D_SAE, D_MODEL, activation_function="jump_relu", lazy_decoder=False, device=cpu, dtype=torch.float32
    )
    for p in clt.parameters():
        p.data.normal_(generator=gen)
    clt.activation_function.threshold.data = torch.rand(n, 1, D_SAE, generator=gen) * 0.5
    clt.to_safetensors(str(work / "native_clt"))
    features = clt.encode(x).detach()
    save_file(
        {"x": x, "features": features, "outputs": clt.forward(x).detach()},
        str(work / "native_clt.expected.safetensors"),
    )
    cases.append({"name": "native_clt", "kind": "clt", "n_layers": n})
    return cases


def import_native(work: Path, cases: list[dict]) -> dict:
    """Third half (scope-hub venv): read circuit-tracer's own folders with scope-hub."""
    from scope_hub.interop import circuit_tracer

    results = {}
    for case in cases:
        expected = load_file(str(work / f"{case['name']}.expected.safetensors"))
        x = expected["x"]
        found = circuit_tracer.load_all(work / case["name"])
        if case["kind"] == "clt":
            module = found[""].eval()
            features = module.encode(x.transpose(0, 1)).transpose(0, 1)
            outputs = module(x.transpose(0, 1)).transpose(0, 1)
        else:
            modules = [found[f"layer_{i}"].eval() for i in range(case["n_layers"])]
            features = torch.stack([m.encode(x[i]) for i, m in enumerate(modules)])
            outputs = torch.stack([m(x[i]) for i, m in enumerate(modules)])
        df = (features - expected["features"]).abs().max().item()
        do = (outputs - expected["outputs"]).abs().max().item()
        results[f"{case['name']} / scope_hub.interop.circuit_tracer.load_all"] = {
            "max_abs_feature_diff": df,
            "max_abs_output_diff": do,
            "ok": _close(df, expected["features"]) and _close(do, expected["outputs"]),
        }
    return results


PARTS = ("to-circuit-tracer", "from-circuit-tracer")
"""What ``--only`` can pick: our exports read by circuit-tracer, and its own folders read by scope-hub."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct-python", default="/tmp/ct-venv/bin/python", help="python of the circuit-tracer venv")
    parser.add_argument("--workdir", help="keep the exported folders here (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="directions to check")
    # A format cross-check on small tensors: it times nothing, so the device only says where they live.
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="accepted; the checks run on cpu")
    parser.add_argument("--check", metavar="DIR", help=argparse.SUPPRESS)  # second half, run by --ct-python
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda is not available here; run with --device cpu")
    if args.check:
        work = Path(args.check)
        print(json.dumps(check_cases(work, json.loads((work / "cases.json").read_text())), indent=2))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cases = export_cases(work) if "to-circuit-tracer" in args.only else []
        (work / "cases.json").write_text(json.dumps(cases))
        done = subprocess.run([args.ct_python, __file__, "--check", str(work)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            return 2
        results = json.loads(done.stdout[done.stdout.index("{") :])
        native = results.pop("native_cases")
        if "from-circuit-tracer" in args.only:
            results.update(import_native(work, native))
    print(json.dumps(results, indent=2))
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v["ok"]]
    print("circuit-tracer agrees with scope-hub on every case" if not failed else f"MISMATCH: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
