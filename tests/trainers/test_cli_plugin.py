"""``scope-hub train`` comes from the ``scope_hub.commands`` entry point, not from a scope_hub import."""

import importlib.metadata

from scope_hub.cli import COMMANDS, main


def test_train_is_an_entry_point_plugin_of_the_scope_hub_cli(capsys):
    entries = {e.name: e.value for e in importlib.metadata.entry_points(group="scope_hub.commands")}
    assert entries.get("train") == "trainers.cli:setup"  # declared in pyproject.toml
    assert main(["train", "--print-config", "synthetic.d_in=8", "dictionary.architecture=relu"]) == 0
    out = capsys.readouterr().out
    assert "d_in: 8" in out and "architecture: relu" in out
    assert COMMANDS["train"].target == "trainers.cli:setup"


def test_train_plugin_reports_bad_overrides_in_one_line(capsys):
    assert main(["train", "--print-config", "optim.no_such_field=1"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_field" in err


def test_train_help_says_what_the_command_does(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Train a sparse dictionary: harvest, train, evaluate, publish." in out
    assert "see `scope-hub train --help`" not in out  # the plugin's help used to point at itself
