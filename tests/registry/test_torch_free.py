"""The registry and the CLI never import torch (DESIGN.md §3)."""

from __future__ import annotations

import subprocess
import sys

from .helpers import KEY, REPO_ROOT, make_dictionary


def test_registry_and_cli_import_and_run_without_torch(tmp_path):
    folder = make_dictionary(tmp_path / "d", seed=1)
    code = (
        "import sys, scope_hub, scope_hub.registry, scope_hub.cli, scope_hub.cli.registry_commands\n"
        "import scope_hub.registry.backends.hf, scope_hub.registry.backends.s3, scope_hub.registry.backends.file\n"
        "from scope_hub.cli import main\n"
        "reg = ['--registry', 'memory://torch-free']\n"
        "assert main(reg + ['ls']) == 0\n"
        # push validates tensors against config.json and renders the card; card and release read them
        f"assert main(reg + ['push', {str(folder)!r}, {KEY!r}]) == 0\n"
        f"assert main(reg + ['card', {KEY!r}]) == 0\n"
        f"assert main(reg + ['release', 'r', {KEY!r}, '--license', 'mit', '--publish', '--out', "
        f"{str(tmp_path / 'r.md')!r}]) == 0\n"
        "assert main(reg + ['release', 'r']) == 0\n"
        "assert scope_hub.Registry is scope_hub.registry.Registry\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-800:]
