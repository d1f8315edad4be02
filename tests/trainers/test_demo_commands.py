"""The commands the demo prints run as printed (checked here on tiny stand-ins; tests/test_demo.py runs the demo)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from scope_hub.cli import main as scope_hub_main
from scope_hub.registry import Registry
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import tiny_llama, tiny_tokenizer
from trainers.config import load_config
from trainers.demo import QUICK, dashboard_command, registry_commands, train_command, train_overrides


def test_printed_train_command_is_the_config_the_demo_trains(tmp_path: Path, capsys) -> None:
    work = tmp_path / "my work"  # a space, and data.paths=[...] (a glob pattern to zsh): both need quoting
    overrides = train_overrides("sae", QUICK, tmp_path / "model", work / "corpus.jsonl", work, "file:///tmp/reg")
    argv = shlex.split(train_command(overrides))
    assert argv[:2] == ["scope-hub", "train"]
    assert scope_hub_main([*argv[1:], "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_config(None, overrides).model_dump(mode="json")


def test_printed_dashboard_and_registry_commands_run(tmp_path: Path, monkeypatch) -> None:
    model_dir = tmp_path / "model dir"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    sae = make_dictionary(make_config("sae", "jumprelu", d_in=64, d_sae=8, site="resid_post", layer=1, model="tiny"))
    sae.save_pretrained(tmp_path / "sae")
    registry = f"file://{tmp_path / 'registry'}"
    key = "tiny:resid_post/layer_1/width_8/sae"
    pinned = f"{key}@v{Registry(registry).push(tmp_path / 'sae', key, license='apache-2.0').version}"
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "A tiny model reads a little text."}\n{"text": "Another short line of text."}\n')

    command = dashboard_command(pinned, model_dir, texts, tmp_path / "board", registry)
    assert scope_hub_main(shlex.split(command)[1:]) == 0, command
    assert (tmp_path / "board" / "index.html").is_file()
    monkeypatch.chdir(tmp_path)  # `pull --to my_dictionary` writes here
    for _name, command in registry_commands(pinned, registry).items():
        assert scope_hub_main(shlex.split(command)[1:]) == 0, command


def test_builtin_corpus_does_not_depend_on_what_the_process_imported() -> None:
    # Packages gain attributes as their submodules get imported anywhere in the process; the corpus is read
    # from source files, so a bare interpreter and one that imported many submodules first agree.
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    probe = (
        "import hashlib, json; {imports}from trainers.corpus import stdlib_documents; docs = stdlib_documents(); "
        "print(len(docs), hashlib.sha256(''.join(json.dumps({{'text': d}}) + '\\n' for d in docs).encode()).hexdigest())"
    )
    extra = "import email.mime.text, logging.handlers, json.decoder, unittest.mock, xml.etree.cElementTree; "
    outputs = [
        subprocess.run(
            [sys.executable, "-c", probe.format(imports=imports)],
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        for imports in ("", extra)
    ]
    assert outputs[0] == outputs[1] and int(outputs[0].split()[0]) > 500, outputs
