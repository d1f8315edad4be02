"""`scope-hub card` and `scope-hub release`: release cards pin keys to versions + content sha256 and are
stored write-once as releases/NAME/vN.md on every backend."""

from __future__ import annotations

import threading

import pytest

from scope_hub.cards import ReleaseCard, parse_card
from scope_hub.cli import main
from scope_hub.registry import Registry

from .helpers import KEY, make_dictionary

TC = "google/gemma-3-270m:mlp/layer_6/width_8/transcoder/demo"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _push_two(reg: Registry, tmp_path) -> None:
    reg.push(make_dictionary(tmp_path / "sae", seed=1, card="SAE"), KEY)
    reg.push(make_dictionary(tmp_path / "tc", seed=2, d_in=4, type_="transcoder", card="TC", key=TC), TC)


def test_release_pins_versions_and_is_published_write_once(harness, tmp_path, capsys):
    reg = harness.registry()
    _push_two(reg, tmp_path)
    url, out = harness.url, tmp_path / "cards" / "demo.md"
    (tmp_path / "about.md").write_text("Two dictionaries trained by `make demo`.\n")
    args = ["--registry", url, "release", "demo", KEY, TC, "--license", "cc-by-4.0", "--out", str(out)]
    code, stdout, err = cli(capsys, *args, "--description", str(tmp_path / "about.md"), "--publish")
    assert code == 0, err
    assert f"published releases/demo/v1.md in {url}" in stdout and f"pinned {KEY}@v1 sha256:" in stdout
    card = ReleaseCard.parse(out.read_text())
    assert (card.name, card.version, card.license, card.base_model) == ("demo", 1, "cc-by-4.0", ["google/gemma-3-270m"])
    assert card.description == "Two dictionaries trained by `make demo`." and card.registry == url
    assert [(e.key, e.sha256) for e in card.entries] == [
        (f"{KEY}@v1", reg.resolve(KEY).content_sha256),
        (f"{TC}@v1", reg.resolve(TC).content_sha256),
    ]
    assert cli(capsys, "--registry", url, "release", "demo")[1] == out.read_text()  # the stored card
    # the same pins again: nothing new is stored
    code, stdout, _ = cli(capsys, *args, "--publish")
    assert code == 0 and "unchanged (identical to releases/demo/v1.md" in stdout
    # a new version of one key: re-pinning makes release v2 and keeps the description of --out
    reg.push(make_dictionary(tmp_path / "sae2", seed=3, card="SAE v2"), KEY)
    assert cli(capsys, *args, "--publish")[0] == 0
    second = ReleaseCard.parse(out.read_text())
    assert second.version == 2 and second.entries[0].key == f"{KEY}@v2"
    assert second.description == card.description
    assert ReleaseCard.parse(cli(capsys, "--registry", url, "release", "demo@v1")[1]) == card
    assert ReleaseCard.parse(cli(capsys, "--registry", url, "release", "demo")[1]) == second
    assert Registry(url, progress=False).release_versions("demo") == [1, 2]


def test_card_command_prints_the_versioned_card(harness, tmp_path, capsys):
    reg = harness.registry()
    _push_two(reg, tmp_path)
    reg.push(make_dictionary(tmp_path / "sae2", seed=3, card="second"), KEY)
    code, out, _ = cli(capsys, "--registry", harness.url, "card", f"{KEY}@v1")
    assert code == 0 and parse_card(out)[0]["scope_hub"]["key"] == f"{KEY}@v1" and "SAE" in out
    code, out, _ = cli(capsys, "--registry", harness.url, "card", KEY)
    assert code == 0 and parse_card(out)[0]["scope_hub"]["key"] == f"{KEY}@v2" and "second" in out


def test_racing_release_publishers_get_distinct_versions(harness, tmp_path):
    reg = harness.registry()
    _push_two(reg, tmp_path)
    cards = [reg.build_release("race", [KEY, TC], license="mit", description=f"publisher {i}") for i in range(3)]
    results, barrier = [], threading.Barrier(3)

    def publish(card):
        barrier.wait()
        results.append(harness.registry().publish_release(card)[0])

    threads = [threading.Thread(target=publish, args=(c,)) for c in cards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.version for c in results) == [1, 2, 3]
    for card in results:  # each stored card names its own version and holds its publisher's text
        assert ReleaseCard.parse(reg.read_release("race", card.version)) == card


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["release", "demo", KEY], 2, "--license is required"),
        (["release", "demo"], 1, "no release named 'demo'"),
        (["release", "demo@latest"], 2, "NAME@vN"),
        (["release", "../evil", KEY, "--license", "mit"], 2, "bad release name"),
        (["release", "demo", "--publish"], 2, "give its KEYs"),
        (["release", "demo", KEY, "--license", "mit"], 1, "is not published"),
        (["card", KEY], 1, "is not published"),
        (["push", "nowhere", KEY, "--private"], 1, "hf://"),
    ],
)
def test_card_and_release_errors_are_one_line(tmp_path, capsys, args, code, needle):
    got, _, err = cli(capsys, "--registry", (tmp_path / "registry").as_uri(), *args)
    assert got == code and needle in err and len(err.strip().splitlines()) == 1, err


def test_push_without_license_fails_with_one_line_and_license_flag_fixes_it(tmp_path, capsys):
    url = (tmp_path / "registry").as_uri()
    bare = make_dictionary(tmp_path / "bare", seed=1, license=None)
    code, _, err = cli(capsys, "--registry", url, "push", str(bare), KEY)
    assert code == 1 and "lacks license" in err and "--license" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "--registry", url, "push", str(bare), KEY, "--license", "mit")
    assert code == 0 and out.startswith(f"pushed {KEY}@v1")
    assert "license: mit" in cli(capsys, "--registry", url, "card", KEY)[1]
