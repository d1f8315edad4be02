"""The registry and the CLI never import torch (DESIGN.md §3)."""

from __future__ import annotations

import subprocess
import sys

from .helpers import REPO_ROOT


def test_registry_and_cli_import_and_run_without_torch():
    code = (
        "import sys, scope_hub, scope_hub.registry, scope_hub.cli, scope_hub.cli.registry_commands\n"
        "import scope_hub.registry.backends.hf, scope_hub.registry.backends.s3, scope_hub.registry.backends.file\n"
        "from scope_hub.cli import main\n"
        "assert main(['--registry', 'memory://torch-free', 'ls']) == 0\n"
        "assert scope_hub.Registry is scope_hub.registry.Registry\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-800:]
