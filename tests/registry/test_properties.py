"""Property-based tests (hypothesis): key grammar round trips and path safety."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scope_hub.errors import KeyParseError, UnsafePathError
from scope_hub.keys import SITES, DictionaryKey, parse_key
from scope_hub.kinds import KINDS
from scope_hub.registry.layout import check_file_name, key_path, manifest_path

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
name = st.sampled_from(ALNUM) | st.builds(
    lambda a, mid, b: a + mid + b, st.sampled_from(ALNUM), st.text(ALNUM + "._-", max_size=12), st.sampled_from(ALNUM)
)
model = st.builds(lambda org, n: f"{org}/{n}" if org else n, st.none() | name, name).filter(lambda m: "--" not in m)
layer = (
    st.integers(0, 9999).map(str)
    | st.just("all")
    | st.lists(st.integers(0, 999), min_size=2, max_size=4).map(lambda xs: "-".join(map(str, xs)))
)
width = st.integers(1, 10**9).map(str) | st.sampled_from(["16k", "65k", "262k", "1m"])
variant = st.none() | st.builds(lambda a, rest: a + rest, st.sampled_from(ALNUM), st.text(ALNUM + "_.-", max_size=20))
ref = (
    st.none()
    | st.integers(1, 10**6).map(lambda n: f"v{n}")
    | st.just("latest")
    | st.text("0123456789abcdef", min_size=12, max_size=64).map(lambda h: f"sha256:{h}")
)


@st.composite
def key_strings(draw) -> str:
    site, type_ = draw(st.sampled_from(SITES)), draw(st.sampled_from(tuple(KINDS)))
    text = f"{draw(model)}:{site}/layer_{draw(layer)}/width_{draw(width)}/{type_}"
    v, r = draw(variant), draw(ref)
    assume(v is None or ".." not in v)
    return text + (f"/{v}" if v else "") + (f"@{r}" if r else "")


@settings(max_examples=300, deadline=None)
@given(key_strings())
def test_valid_keys_round_trip(text):
    key = parse_key(text)
    assert str(key) == text
    assert parse_key(str(key)) == key
    if ".." not in key.path:
        assert DictionaryKey.from_path(key.path) == key.unpinned()


@settings(max_examples=300, deadline=None)
@given(key_strings())
def test_key_paths_are_safe_or_refused(text):
    key = parse_key(text)
    try:
        path = key_path(key)
    except UnsafePathError:
        assert ".." in key.path  # the only parseable keys the registry refuses
        return
    parts = path.split("/")
    assert not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)
    assert posixpath.normpath(path) == path  # nothing to collapse: the path means what it says
    assert manifest_path(key, 1).startswith(f"manifests/{path}/_versions/")


BAD_PIECES = ["", " ", "a b", "x/y/z", "..", "/abs", "é", "a\\b", "a:b", "a\nb", "@", "%2e%2e"]


@settings(max_examples=200, deadline=None)
@given(key_strings(), st.sampled_from(BAD_PIECES), st.sampled_from(["model", "site", "layer", "width", "type"]))
def test_keys_with_a_bad_part_are_refused(text, bad, part):
    key = parse_key(text)
    pieces = {
        "model": key.model,
        "site": key.site,
        "layer": f"layer_{key.layer}",
        "width": f"width_{key.width}",
        "type": key.type,
    }
    pieces[part] = {"layer": f"layer_{bad}", "width": f"width_{bad}"}.get(part, bad)
    mangled = f"{pieces['model']}:{pieces['site']}/{pieces['layer']}/{pieces['width']}/{pieces['type']}"
    assume(mangled != str(key.unpinned()))
    with pytest.raises((KeyParseError, UnsafePathError)):
        key_path(parse_key(mangled))


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_file_names_are_flat_and_confined(text):
    try:
        name = check_file_name(text)
    except UnsafePathError:
        return
    assert "/" not in name and "\\" not in name and ".." not in name and name not in ("", ".")
    joined = posixpath.normpath(posixpath.join("/snapshot", name))
    assert posixpath.dirname(joined) == "/snapshot"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", ".hidden", "", "a..b", "sp ace", "ünï"])
def test_known_bad_file_names(name):
    with pytest.raises(UnsafePathError):
        check_file_name(name)
