"""A kit for extenders: tiny models, a tiny dictionary factory, and the suites each extension point passes.

A third party adding a model family, a dictionary kind, a storage backend or a format converter
tests it with what the project's own tests use (needs ``pytest``, in the ``test`` extra):

* **model family** (hookpoint adapter): subclass :class:`AdapterSuite` with a tiny model::

      from scope_hub.testing import AdapterSuite
      class TestMyFamily(AdapterSuite):
          make_model = staticmethod(my_tiny_model)

* **dictionary kind**: register it (:func:`scope_hub.kinds.register_kind`), then
  ``check_dictionary_kind("my_kind", tmp_path)``;
* **tiny things to test with**: :func:`tiny_model` (every supported family), :func:`tiny_tokenizer`,
  :func:`make_config` / :func:`make_dictionary` (any kind and architecture, random weights).

Storage backends and format converters: see ``docs/architecture.md`` (their suites live in
``tests/registry/test_backend_suite.py`` and ``tests/interop/test_roundtrip.py``).

Example:
    >>> from scope_hub.testing import make_config, make_dictionary, tiny_model
    >>> model = tiny_model("llama")
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=model.config.hidden_size))
    >>> sae.d_sae
    16
"""

from __future__ import annotations

from scope_hub.lazy_imports import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "AdapterSuite": "scope_hub.testing.adapters",
        "ARCHS": "scope_hub.testing.dictionaries",
        "SINGLE": "scope_hub.testing.dictionaries",
        "check_dictionary_kind": "scope_hub.testing.dictionaries",
        "make_config": "scope_hub.testing.dictionaries",
        "make_dictionary": "scope_hub.testing.dictionaries",
        "numpy_params": "scope_hub.testing.dictionaries",
        "tiny_model": "scope_hub.testing.tiny_models",
        "tiny_tokenizer": "scope_hub.testing.tiny_models",
        "tiny_llama": "scope_hub.testing.tiny_models",
        "tiny_gemma2": "scope_hub.testing.tiny_models",
        "tiny_gemma3": "scope_hub.testing.tiny_models",
        "tiny_gpt2": "scope_hub.testing.tiny_models",
        "tiny_gpt_neox": "scope_hub.testing.tiny_models",
        "tiny_qwen2": "scope_hub.testing.tiny_models",
        "tiny_qwen3": "scope_hub.testing.tiny_models",
    },
)
