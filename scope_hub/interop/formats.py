"""The table of formats, format detection, and one-off conversion between any two formats.

Every converter module has the same interface: ``NAME``, ``detect(folder) -> bool``,
``load(folder, *, allow_nonfinite=False) -> Dictionary`` (NaN/inf weights refused unless
allowed, as for native folders) and ``save(dictionary, out) -> Path``; a module may add
``load_all(folder) -> {name: Dictionary}`` / ``save_all({name: Dictionary}, out)`` when one
folder of its format holds several dictionaries (a circuit-tracer transcoder set). This module
imports no converter (and so no torch) until one is used.

Example:
    >>> sorted(FORMATS)[:3]
    ['circuit-tracer', 'dictionary-learning', 'gemma-scope-1']
    >>> FORMATS["saelens"].module
    'scope_hub.interop.saelens'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from scope_hub.errors import ConfigError, DictionaryNotFoundError


@dataclass(frozen=True)
class FormatInfo:
    """One row of :data:`FORMATS`."""

    module: str
    """Module implementing ``detect``/``load``/``save``."""
    reads: str
    """What the converter reads (for docs and ``--help``)."""


FORMATS: dict[str, FormatInfo] = {
    "scope-hub": FormatInfo("scope_hub.interop.native", "our config.json + params.safetensors"),
    "gemma-scope-2": FormatInfo("scope_hub.interop.gemma_scope_2", "Gemma Scope 2 config.json + params*.safetensors"),
    "gemma-scope-1": FormatInfo("scope_hub.interop.gemma_scope_1", "Gemma Scope params.npz"),
    "saelens": FormatInfo("scope_hub.interop.saelens", "SAELens 6 cfg.json + sae_weights.safetensors"),
    "sparsify": FormatInfo("scope_hub.interop.sparsify", "EleutherAI sparsify cfg.json + sae.safetensors"),
    "dictionary-learning": FormatInfo(
        "scope_hub.interop.dictionary_learning", "dictionary_learning ae.pt + config.json"
    ),
    "circuit-tracer": FormatInfo(
        "scope_hub.interop.circuit_tracer",
        "circuit-tracer config.yaml + layer_{i}.safetensors | W_enc_{i}/W_dec_{i}.safetensors",
    ),
}
"""Format name (as used by ``scope-hub convert --from/--to``) -> converter."""


def get_format(name: str) -> ModuleType:
    """The converter module of format ``name``."""
    info = FORMATS.get(name)
    if info is None:
        raise ConfigError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(info.module)


def detect_format(folder: Path | str) -> str:
    """The one format ``folder`` is in (or, failing that, every subfolder is in).

    Raises :class:`ConfigError` naming the candidates when several formats match, and the
    files seen when none does.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DictionaryNotFoundError(f"{folder}: no such folder")
    matches = [name for name in FORMATS if get_format(name).detect(folder)]
    if not matches:
        subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        per_sub = {tuple(n for n in FORMATS if get_format(n).detect(s)) for s in subs} - {()}
        if len(per_sub) == 1 and len(next(iter(per_sub))) == 1:  # other subfolders (logs ...) are ignored
            matches = list(next(iter(per_sub)))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(
            f"{folder}: ambiguous, it looks like several formats ({', '.join(matches)}); say which with --from"
        )
    seen = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise ConfigError(
        f"{folder}: format not recognised (found {seen}); formats: "
        + "; ".join(f"{n}: {i.reads}" for n, i in FORMATS.items())
    )


def load_all(fmt: str, folder: Path | str) -> dict[str, Any]:
    """Every dictionary in ``folder``: ``{"": d}`` for a dictionary folder, ``{sub: d}`` for a
    folder of dictionary folders (or the format's own ``load_all``)."""
    module, folder = get_format(fmt), Path(folder)
    if hasattr(module, "load_all"):
        return module.load_all(folder)
    if module.detect(folder):
        return {"": module.load(folder)}
    subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and module.detect(p)] if folder.is_dir() else []
    if not subs:
        raise ConfigError(f"{folder}: not a {fmt} folder (nor a folder of them)")
    return {p.name: module.load(p) for p in subs}


def save_all(fmt: str, dictionaries: dict[str, Any], out: Path | str) -> list[Path]:
    """Write dictionaries in format ``fmt``: one to ``out``, several to ``out/<name>``."""
    module, out = get_format(fmt), Path(out)
    if hasattr(module, "save_all"):
        return module.save_all(dictionaries, out)
    if list(dictionaries) == [""]:
        return [module.save(dictionaries[""], out)]
    return [module.save(d, out / name) for name, d in dictionaries.items()]


def convert(
    src: Path | str, out: Path | str, *, to: str, from_: str | None = None, overwrite: bool = False
) -> list[Path]:
    """Convert the dictionary (or dictionaries) in ``src`` from ``from_`` (detected when None) to ``to``.

    ``out`` must not exist unless ``overwrite``. Returns the folders written.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DictionaryNotFoundError(f"{src}: no such folder")
    fmt_in = from_ or detect_format(src)
    get_format(to)  # fail on an unknown target before reading anything
    if out.is_file() or (out.exists() and any(out.iterdir()) and not overwrite):
        raise ConfigError(f"{out}: exists and is not empty; choose another output or pass --overwrite")
    return save_all(to, load_all(fmt_in, src), out)
