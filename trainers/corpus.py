"""A real English corpus present on every machine without network: the standard library's docstrings.

Python ships thousands of hand-written English docstrings. Read from the
standard library's source files (not from imported modules, whose attributes
depend on what else the process imported) in a fixed order from a fixed module
list, they form a small corpus that is the same on every run of the same
Python; its sha256 is recorded in every card trained on it (it differs between
Python versions, which is exactly what the hash is for).

Example:
    >>> import tempfile
    >>> path, digest, n_docs = write_stdlib_corpus(tempfile.mkdtemp() + "/corpus.jsonl", max_docs=5)
    >>> n_docs, len(digest)
    (5, 64)
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import sys
import sysconfig
from pathlib import Path

from scope_hub.atomic_files import atomic_write_text

MODULES = (
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
)
MIN_CHARS = 200
"""Docstrings shorter than this are mostly signatures, not prose."""


def _source_file(module_name: str) -> Path | None:
    """The module's ``.py`` file in the standard library folder (None for C modules such as ``math``)."""
    base = Path(sysconfig.get_paths()["stdlib"]).joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _source_docstrings(source: str) -> list[str]:
    """Docstrings of a module's source: the module, its public classes and functions, their public methods.

    Parsed from the file rather than read from the imported module: a package's attributes change with
    whatever else the process imported (its submodules appear on it), and the corpus must not.
    """
    tree = ast.parse(source)
    found = [ast.get_docstring(tree) or ""]
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if not isinstance(node, definitions) or node.name.startswith("_"):
            continue
        found.append(ast.get_docstring(node) or "")
        if isinstance(node, ast.ClassDef):
            found += [
                ast.get_docstring(member) or ""
                for member in node.body
                if isinstance(member, definitions) and not member.name.startswith("_")
            ]
    return found


def _compiled_docstrings(module_name: str) -> list[str]:
    """Docstrings of a C module (no source file): its own members, which do not depend on other imports."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    found = [inspect.getdoc(module) or ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or inspect.ismodule(member):
            continue
        if getattr(member, "__module__", module_name) != module_name:
            continue
        found.append(inspect.getdoc(member) or "")
        if inspect.isclass(member):
            found += [inspect.getdoc(m) or "" for n, m in sorted(vars(member).items()) if not n.startswith("_")]
    return found


def _docstrings(module_name: str) -> list[str]:
    source = _source_file(module_name)
    found = (
        _source_docstrings(source.read_text(encoding="utf-8"))
        if source is not None
        else _compiled_docstrings(module_name)
    )
    return [doc.strip() for doc in found if len(doc.strip()) >= MIN_CHARS]


def stdlib_documents(max_docs: int | None = None) -> list[str]:
    """Unique docstrings of :data:`MODULES`, in a fixed order."""
    seen: set[str] = set()
    docs: list[str] = []
    for module_name in MODULES:
        for doc in _docstrings(module_name):
            if doc not in seen:
                seen.add(doc)
                docs.append(doc)
                if max_docs is not None and len(docs) >= max_docs:
                    return docs
    return docs


def write_stdlib_corpus(path: str | Path, max_docs: int | None = None) -> tuple[Path, str, int]:
    """Write the corpus as JSONL (``{"text": ...}`` per line) atomically; returns (path, sha256, n_docs)."""
    path = Path(path)
    docs = stdlib_documents(max_docs)
    text = "".join(json.dumps({"text": doc}) + "\n" for doc in docs)
    atomic_write_text(path, text)
    return path, hashlib.sha256(text.encode()).hexdigest(), len(docs)


def corpus_label() -> str:
    """Human-readable name of the corpus, with the Python version that produced it."""
    return f"python-{sys.version_info.major}.{sys.version_info.minor}-stdlib-docstrings"
