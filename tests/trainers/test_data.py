"""Text -> token windows: files, JSONL, chats through the chat template, datasets, BOS and packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scope_hub.errors import ConfigError
from scope_hub.testing.tiny_models import BOS_ID, PAD_ID, tiny_tokenizer
from trainers.config import DataConfig
from trainers.data import kept_positions, token_sequences

CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_text_files_pack_into_windows_that_start_with_bos(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abcdefghij")
    (tmp_path / "b.txt").write_text("klmnopq")
    seqs = token_sequences(DataConfig(paths=[str(tmp_path / "*.txt")], context_size=6), tiny_tokenizer())
    b = BOS_ID
    # doc a's BOS starts window 1; window 2 begins mid-document and gets one added; doc b brings its own
    assert seqs.input_ids.tolist() == [[b, *b"abcde"], [b, *b"fghij"], [b, *b"klmno"]]
    assert bool(seqs.attention_mask.all())


def test_unpacked_documents_are_padded_and_masked(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "hi"}, {"text": "hello"}])
    seqs = token_sequences(DataConfig(paths=[str(path)], context_size=8, packing=False), tiny_tokenizer())
    assert seqs.input_ids[0].tolist() == [BOS_ID, ord("h"), ord("i")] + [PAD_ID] * 5
    assert seqs.attention_mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    keep = kept_positions(seqs.input_ids, seqs.attention_mask, BOS_ID, exclude_bos=True)
    assert keep[0].tolist() == [False, True, True] + [False] * 5


def test_no_bos_when_disabled(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "abcdefgh"}])
    seqs = token_sequences(DataConfig(paths=[str(path)], context_size=4, prepend_bos=False), tiny_tokenizer())
    assert seqs.input_ids.tolist() == [[97, 98, 99, 100], [101, 102, 103, 104]]


def test_chats_go_through_the_chat_template(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    path = _jsonl(tmp_path / "c.jsonl", [{"messages": chat}])
    cfg = DataConfig(paths=[str(path)], messages_field="messages", context_size=32, packing=False)
    ids = token_sequences(cfg, tok).input_ids[0].tolist()
    text = tok.decode([i for i in ids if i < 256])
    assert ids[0] == BOS_ID and ids[1] != BOS_ID  # the template's BOS, not a second one
    assert text == "<user>2+2?\n<assistant>4\n"


def test_chat_without_template_is_a_config_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(ConfigError, match="chat template"):
        token_sequences(DataConfig(paths=[str(path)], messages_field="messages"), tiny_tokenizer())


def test_missing_field_and_file_are_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(ConfigError, match="'text'"):
        token_sequences(DataConfig(paths=[str(path)]), tiny_tokenizer())
    with pytest.raises(ConfigError, match="matches no file"):
        token_sequences(DataConfig(paths=[str(tmp_path / "nope.txt")]), tiny_tokenizer())


def test_saved_dataset_and_hash(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["one two three four", "five six seven"]}).save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(dataset=str(tmp_path / "ds"), context_size=8)
    a = token_sequences(cfg, tiny_tokenizer())
    assert a.input_ids.shape[1] == 8 and "ds:train" in a.description
    b = token_sequences(DataConfig(dataset=str(tmp_path / "ds"), context_size=8, prepend_bos=False), tiny_tokenizer())
    assert a.sha256 != b.sha256  # the hash covers the tokens as consumed


def test_max_tokens_caps_the_data(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x" * 1000)
    seqs = token_sequences(
        DataConfig(paths=[str(tmp_path / "a.txt")], context_size=10, max_tokens=50), tiny_tokenizer()
    )
    assert seqs.input_ids.shape == (5, 10)
