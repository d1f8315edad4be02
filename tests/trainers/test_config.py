"""The config is one strict pydantic model and also the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scope_hub.errors import ConfigError
from trainers.cli import main
from trainers.config import EXAMPLES, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_plus_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"synthetic": {"d_in": 8}, "optim": {"lr": 1.0}}))
    cfg = load_config(
        path, ["optim.lr=3e-4", "dictionary.matryoshka_groups=[8,16]", "dictionary.d_sae=24", "train.resume=false"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.dictionary.matryoshka_groups == [8, 16] and cfg.train.resume is False
    assert cfg.optim.beta1 == 0.0 and cfg.optim.beta2 == 0.999  # the GS2 recipe's Adam
    assert cfg.loss.bandwidth == 0.001 and cfg.loss.threshold_init == 0.001


@pytest.mark.parametrize(
    "override,where",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("dictionary.architecture=gelu", "architecture"),
        ("dictionary.architecture=topk", "dictionary.k"),
        # a transcoder reading after the output it predicts is not causal
        ("dictionary.type=transcoder", "set harvest.site=mlp_in"),
    ],
)
def test_errors_name_the_field(override: str, where: str) -> None:
    source = "model.id=some/model" if "harvest.site" in where else "synthetic.d_in=8"  # sites need a model
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(None, [source, override])


def test_resampling_a_topk_dictionary_is_refused_not_ignored() -> None:
    topk = ["synthetic.d_in=8", "dictionary.architecture=topk", "dictionary.k=4", "loss.resample_every=10"]
    with pytest.raises(ConfigError, match=r"loss\.resample_every applies to relu and jumprelu"):
        load_config(None, topk)
    load_config(None, [*topk[:1], "dictionary.architecture=relu", "loss.resample_every=10"])


def test_every_field_is_documented() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            annotation = field.annotation
            for inner in getattr(annotation, "__args__", (annotation,)):
                if isinstance(inner, type) and issubclass(inner, TrainConfig.__mro__[1]):
                    walk(inner)

    walk(TrainConfig)


def test_fingerprint_ignores_paths_but_not_numbers() -> None:
    base = load_config(None, ["synthetic.d_in=8"])
    moved = load_config(None, ["synthetic.d_in=8", "output.dir=/elsewhere", "train.checkpoint_dir=/x"])
    changed = load_config(None, ["synthetic.d_in=8", "optim.lr=1e-3"])
    assert base.fingerprint() == moved.fingerprint() != changed.fingerprint()


def test_cli_print_config_and_exit_codes(capsys) -> None:
    assert main(["--print-config", "synthetic.d_in=8", "optim.lr=0.5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.5
    assert main(["synthetic.d_in=8", "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err


def test_scope_hub_errors_at_run_time_are_one_line_with_the_right_exit_code(capsys, monkeypatch) -> None:
    import trainers.cli
    from scope_hub.errors import HookpointError, IntegrityError

    for error, code in (
        (HookpointError("layer 30 is out of range; the model has 18 layers (0..17)"), 2),
        (IntegrityError("sha256 mismatch"), 1),
    ):

        def fail(args, error=error):
            raise error

        monkeypatch.setattr(trainers.cli, "run", fail)
        assert main(["synthetic.d_in=8"]) == code
        assert capsys.readouterr().err.strip().splitlines() == [f"python -m trainers: error: {error}"]


def test_python_m_trainers_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers",
            "synthetic.d_in=8",
            "synthetic.n_atoms=16",
            "dictionary.d_sae=16",
            "dictionary.architecture=relu",
            "train.tokens=4096",
            "train.batch_size=512",
            "eval.tokens=1024",
            f"output.dir={out}",
            "train.threads=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "fvu=" in done.stdout and (out / "config.json").is_file()


@pytest.mark.parametrize("via", ["python -m trainers", "scope-hub train"])
def test_missing_config_file_is_a_one_line_config_error(via: str, tmp_path: Path, capsys, monkeypatch) -> None:
    from scope_hub.cli import main as scope_hub_main

    monkeypatch.chdir(tmp_path)
    argv = ["config.yaml", "--print-config"]
    code = main(argv) if via == "python -m trainers" else scope_hub_main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{via}: error: config file 'config.yaml' not found; start from ")
    assert "examples/sae.yaml" in err and "KEY=VALUE" in err


def test_shipped_examples_validate_and_are_packaged() -> None:
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert [p.name for p in examples][:1] == ["sae.yaml"], examples
    for example in examples:
        cfg = load_config(example)
        assert cfg.model.id and (cfg.data.paths or cfg.data.dataset or cfg.data.corpus), f"{example}: no data"
    package_data = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"trainers" = ["examples/*.yaml"]' in package_data, "wheels would ship without the examples"


def test_a_k_left_over_from_a_topk_config_is_not_published_for_jumprelu() -> None:
    from trainers.params import dictionary_config

    cfg = load_config(
        None, ["synthetic.d_in=8", "dictionary.architecture=jumprelu", "dictionary.l0_target=4", "dictionary.k=32"]
    )
    published = dictionary_config(cfg, d_in=8, d_out=8, n_layers=1)
    assert published.k is None and published.l0_target == 4


def test_override_errors_name_the_override_and_the_closest_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLES / "sae.yaml", ["optim.learning_rate=3e-4"])
    assert str(caught.value) == "override optim.learning_rate: unknown field (did you mean optim.lr?)"
    with pytest.raises(
        ConfigError, match=r"^override dictionary\.archtecture: .*did you mean dictionary\.architecture"
    ):
        load_config(EXAMPLES / "sae.yaml", ["dictionary.archtecture=topk"])
    # a value from the file still names the file
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"synthetic": {"d_in": 8}, "optim": {"lrr": 1.0}}))
    with pytest.raises(ConfigError, match=rf"^{path}: optim\.lrr: unknown field \(did you mean optim\.lr\?\)$"):
        load_config(path, ["train.tokens=4096"])


@pytest.mark.parametrize(
    "override,example",
    [("harvest.layers=3", "harvest.layers=[3,6,9]"), ("data.paths=notes.txt", "data.paths=[docs/a.txt,corpus.jsonl]")],
)
def test_list_fields_given_a_scalar_show_the_list_syntax(override: str, example: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["model.id=some/model", override])
    message = str(caught.value)
    assert message.startswith(f"override {override.partition('=')[0]}: ") and example in message, message


def test_a_bare_word_override_shows_the_key_value_and_list_forms() -> None:
    with pytest.raises(ConfigError, match=r"harvest\.layers=\[3,6,9\]"):
        load_config(None, ["synthetic.d_in=8", "harvest.layers"])
