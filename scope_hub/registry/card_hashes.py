"""What a card records against what is really there: the sha256 of each file of its version.

A rendered card lists every file's sha256 in its front matter (``scope_hub.files``); a pull
and ``verify`` compare that list with the manifest, whose own hashes the blobs are checked
against, so a card that tells readers other bytes than the ones served is caught.

Example:
    >>> from scope_hub.cards import compose_card
    >>> card = compose_card({"scope_hub": {"files": {"a.bin": "a" * 64}}}, "").encode()
    >>> card_text_problems(card, {"a.bin": "b" * 64}, "m@v1")
    ['m@v1/a.bin: sha256 bbbbbbbbbbbbbbbb but the card records aaaaaaaaaaaaaaaa']
"""

from __future__ import annotations

import yaml

from scope_hub.metadata import Manifest

CARD_NAME = "README.md"
"""File name of a version's card."""


def card_text_problems(card: bytes, hashes: dict[str, str], where: str) -> list[str] | None:
    """Each file whose sha256 in ``hashes`` differs from what the card records, is missing, or is
    not listed (:func:`scope_hub.registry.content.card_problems` for a card's bytes). ``where``
    prefixes each file named (a folder, a ``key@vN``). None when the card records no hashes."""
    from scope_hub.cards import parse_card

    try:
        front = parse_card(card.decode("utf-8"))[0]
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        return [f"{CARD_NAME} is not a readable card ({type(exc).__name__}); re-render it with `scope-hub card`"]
    fields = front.get("scope_hub") if isinstance(front, dict) else None
    recorded = fields.get("files") if isinstance(fields, dict) else None
    if not isinstance(recorded, dict) or not all(isinstance(k, str) for k in recorded):
        return None
    actual = {name: sha for name, sha in hashes.items() if name != CARD_NAME}
    problems = [
        f"{where}/{name}: sha256 {actual[name][:16]} but the card records {str(sha)[:16]}"
        for name, sha in sorted(recorded.items())
        if name in actual and actual[name] != sha
    ]
    problems += [f"{where}/{name}: missing (the card lists it)" for name in sorted(set(recorded) - set(actual))]
    problems += [f"{where}/{name}: not listed in the card" for name in sorted(set(actual) - set(recorded))]
    return problems


def manifest_card_problems(manifest: Manifest, card: bytes, label: str) -> list[str] | None:
    """What a version's card (its bytes) records against what its manifest lists, one line per
    difference prefixed with ``label``; None when the card records no hashes."""
    found = card_text_problems(card, {e.path: e.sha256 for e in manifest.files}, label)
    return None if found is None else [f"{label}: the card disagrees with the manifest: {p}" for p in found]
