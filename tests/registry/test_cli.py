"""`scope-hub` end to end: in-process `main([...])` for behaviour, subprocesses for exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import scope_hub.cli as cli_module
from scope_hub.cli import COMMANDS, main, register_command

from .helpers import KEY, cli_env, folder_bytes, make_dictionary, run_cli


@pytest.fixture
def url(tmp_path) -> str:
    return (tmp_path / "registry").as_uri()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_push_pull_ls_info_lock_yank_gc_reindex_verify(url, tmp_path, capsys):
    v1 = make_dictionary(tmp_path / "v1", seed=1)
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: apache-2.0\n---\n# Layer 6 SAE\n")
    assert cli(capsys, "--registry", url, "push", str(v1), KEY, "--card", str(card))[:2] == (
        0,
        f"pushed {KEY}@v1 sha256:" + _sha(url) + "\n",
    )
    code, out, _ = cli(capsys, "--registry", url, "push", str(v1), KEY, "--card", str(card))
    assert code == 0 and out.startswith("unchanged")
    assert cli(capsys, "push", str(make_dictionary(tmp_path / "v2", seed=2)), KEY, "--registry", url)[0] == 0
    code, out, _ = cli(capsys, "--registry", url, "pull", f"{KEY}@v1")
    assert code == 0 and folder_bytes(out.strip()) == folder_bytes(v1)
    assert "# Layer 6 SAE" in (Path(out.strip()) / "README.md").read_text()
    code, out, _ = cli(capsys, "--registry", url, "pull", KEY, "--to", str(tmp_path / "here"))
    assert out.strip() == str(tmp_path / "here") and (tmp_path / "here" / "params.safetensors").exists()
    code, out, _ = cli(capsys, "--registry", url, "ls", "*layer_6*")
    assert code == 0 and out.startswith(f"{KEY}@v2\t") and "2 version(s)" in out
    code, out, _ = cli(capsys, "--registry", url, "ls", "--json")
    assert json.loads(out)["latest"] == 2
    code, out, _ = cli(capsys, "--registry", url, "info", f"{KEY}@v1")
    assert code == 0 and "# Layer 6 SAE" in out and "v2" in out and "params.safetensors" in out
    lock = tmp_path / "scope.lock"
    assert cli(capsys, "--registry", url, "lock", KEY, "--out", str(lock))[0] == 0
    assert json.loads(lock.read_text())["entries"][0]["version"] == 2
    assert cli(capsys, "--registry", url, "yank", f"{KEY}@v2")[0] == 0
    assert cli(capsys, "--registry", url, "rm", f"{KEY}@v1")[0] == 2  # no destructive-sounding alias of a soft verb
    assert cli(capsys, "--registry", url, "ls")[1].startswith(f"{KEY}@v1\t")
    code, out, _ = cli(capsys, "--registry", url, "pull", KEY, "--lock", str(lock))  # the lock still pins v2
    assert code == 0 and out.strip().endswith("/v2")
    assert cli(capsys, "--registry", url, "gc", "--grace", "0")[0] == 0
    assert cli(capsys, "--registry", url, "reindex")[1] == "indexed 2 version(s)\n"
    code, out, _ = cli(capsys, "--registry", url, "verify", "--cache")
    assert code == 0 and "2 card(s): 0 problem(s)" in out


def _sha(url: str) -> str:
    from scope_hub.registry import Registry

    return Registry(url).resolve(f"{KEY}@v1").content_sha256[:12]


def test_verify_exits_1_on_a_corrupt_blob(url, tmp_path, capsys):
    assert cli(capsys, "--registry", url, "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY)[0] == 0
    blob = next((tmp_path / "registry" / "blobs" / "sha256").iterdir())
    blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    code, out, err = cli(capsys, "--registry", url, "verify")
    assert code == 1 and "corrupt" in out and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["pull", "not a key"], 2, "bad key"),
        (["pull", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae"], 1, "is not published"),
        (["pull", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae@v3"], 1, "does not exist"),
        (["yank", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae"], 2, "exact version"),
        (["push"], 2, "required"),
        (["frobnicate"], 2, "unknown command"),
        (["ls", "--no-such-flag"], 2, "unrecognized arguments"),
        (
            ["pull", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae", "--lock", "missing.lock"],
            1,
            "does not exist",
        ),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(url, capsys, args, code, needle):
    got, _out, err = cli(capsys, "--registry", url, *args)
    assert got == code and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_offline_pull_of_an_uncached_key_fails_clearly(url, tmp_path, capsys, monkeypatch):
    assert cli(capsys, "--registry", url, "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY)[0] == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # honoured for every backend, not only hf://
    code, _, err = cli(capsys, "--registry", url, "pull", KEY)
    assert code == 1 and "offline" in err


def test_real_processes_exit_with_the_documented_codes(url, tmp_path):
    ok = run_cli("--registry", url, "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY)
    assert ok.returncode == 0 and ok.stdout.startswith("pushed")
    pulled = run_cli("--registry", url, "pull", KEY)
    assert (
        pulled.returncode == 0
        and (tmp_path / "scope-cache") in __import__("pathlib").Path(pulled.stdout.strip()).parents
    )
    usage = run_cli("--registry", url, "pull")
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
    missing = run_cli("--registry", url, "info", KEY.replace("layer_6", "layer_7"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    default = run_cli("ls", env=cli_env(SCOPE_HUB_REGISTRY=url))  # the registry comes from the environment
    assert default.returncode == 0 and default.stdout.startswith(KEY)


def test_new_commands_register_lazily(tmp_path, capsys, monkeypatch):
    module = tmp_path / "extra_cmd.py"
    module.write_text(
        "def setup(parser):\n    parser.add_argument('n', type=int)\n"
        "    def run(args):\n        print(args.n * 2)\n        return 0\n    return run\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "double", COMMANDS["ls"])  # restored by monkeypatch
    register_command("double", "double a number", "extra_cmd:setup")
    assert "extra_cmd" not in __import__("sys").modules
    assert cli(capsys, "double", "21")[:2] == (0, "42\n")
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "double a number" in out


def test_a_missing_version_lists_the_existing_ones(url, tmp_path, capsys):
    for seed in (1, 2):
        assert (
            cli(capsys, "--registry", url, "push", str(make_dictionary(tmp_path / f"v{seed}", seed=seed)), KEY)[0] == 0
        )
    for command in ("pull", "info"):
        code, _, err = cli(capsys, "--registry", url, command, f"{KEY}@v7")
        assert code == 1 and f"@v7 does not exist in {url}; available: v1, v2; see `scope-hub info {KEY}`" in err
    code, _, err = cli(capsys, "--registry", url, "pull", f"{KEY}/other@v1")
    assert code == 1 and "is not published" in err and "has no versions" in err


def test_ls_says_why_it_printed_nothing(url, tmp_path, capsys):
    typo = tmp_path / "no" / "such" / "registry"
    code, out, err = cli(capsys, "--registry", typo.as_uri(), "ls")
    assert (code, out) == (1, "") and "does not exist" in err and "push" in err and not typo.exists()
    assert cli(capsys, "--registry", url, "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY)[0] == 0
    code, out, err = cli(capsys, "--registry", url, "ls", "*layer_9*")
    assert (code, out) == (0, "") and "no key" in err and "1 key(s) published" in err
    (tmp_path / "empty").mkdir()
    for where, needle in [
        ((tmp_path / "empty").as_uri(), "is empty"),
        ("memory://never-used", "is empty or does not exist"),
    ]:
        code, out, err = cli(capsys, "--registry", where, "ls")
        assert (code, out) == (0, "") and needle in err


def test_a_mistyped_command_gets_a_suggestion_and_plugins_describe_themselves(tmp_path, capsys, monkeypatch):
    (tmp_path / "fake_plugin.py").write_text(
        '"""Fake plugin: says hello.\n\nMore text."""\n'
        "def described(parser):\n    parser.description = 'frob the widgets'\n    return lambda args: 0\n"
        "def bare(parser):\n    return lambda args: 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_module, "COMMANDS", {n: c for n, c in COMMANDS.items() if not c.plugin})
    monkeypatch.setattr(cli_module, "_register_plugins", lambda: None)
    code, _, err = cli(capsys, "pul", KEY)
    assert code == 2 and "did you mean 'pull'?" in err and "plugin commands such as `train`" in err
    register_command("frob", None, "fake_plugin:described", plugin=True)
    register_command("hello", None, "fake_plugin:bare", plugin=True)
    assert cli(capsys, "--registry", "memory://lazy", "ls")[0] == 0 and "fake_plugin" not in __import__("sys").modules
    code, _, err = cli(capsys, "pul", KEY)
    assert code == 2 and "did you mean 'pull'?" in err and "plugin commands" not in err  # plugins are installed
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "frob the widgets" in out and "Fake plugin: says hello." in out and "see `scope-hub" not in out
    assert "frob the widgets" in cli(capsys, "frob", "--help")[1]
    assert "Fake plugin: says hello." in cli(capsys, "hello", "--help")[1]
