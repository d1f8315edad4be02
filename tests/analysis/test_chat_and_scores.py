"""Chat rendering with role tags, prompt files, and the refusal score (checked by brute force)."""

from __future__ import annotations

import json

import pytest
import torch

from scope_hub.analysis.chat import ROLES, render_chat
from scope_hub.analysis.prompts import SHIPPED, load_prompts
from scope_hub.analysis.scores import (
    RefusalScore,
    generate_answers,
    is_refusal,
    refusal_rate,
)
from scope_hub.errors import ConfigError, DictionaryNotFoundError
from scope_hub.testing.tiny_models import tiny_gemma3, tiny_llama, tiny_tokenizer
from tests.analysis.helpers import chat_tokenizer


def _text(tok, batch, row, *roles):
    return tok.decode(batch.select_ids(row, *roles))


def test_roles_positions_and_left_padding():
    tok = chat_tokenizer()
    convs = [
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye?"},
        ],
        "A longer question here?",
    ]
    batch = render_chat(tok, convs)
    assert _text(tok, batch, 0, "system") == "Be kind." and _text(tok, batch, 0, "user") == "Hi?Bye?"
    assert _text(tok, batch, 0, "model") == "Hello!" and _text(tok, batch, 1, "user") == "A longer question here?"
    assert batch.attention_mask[0, 0] == 1 and batch.attention_mask[1, 0] == 0  # row 1 is shorter: left-padded
    assert (batch.role_ids[batch.attention_mask == 0] == ROLES.index("pad")).all()
    last_user = batch.positions("last_user")[:, 0]
    assert [tok.decode([int(batch.input_ids[i, p])]) for i, p in enumerate(last_user)] == ["?", "?"]
    assert (
        tok.decode(batch.input_ids[0, -10:]) == "<|model|>\n"
        and (batch.positions("answer") == batch.input_ids.shape[1] - 1).all()
    )
    assert batch.position_ids[1, batch.attention_mask[1].argmax()] == 0
    hidden = torch.arange(batch.input_ids.numel(), dtype=torch.float).view(*batch.input_ids.shape, 1)
    assert batch.gather(hidden, "last_user")[:, 0].tolist() == [float(hidden[i, p, 0]) for i, p in enumerate(last_user)]


def test_continuations_are_model_turn_and_answer_position_precedes_them():
    tok = chat_tokenizer()
    batch = render_chat(tok, ["Q?"], continuations=["Think. 42"])
    assert _text(tok, batch, 0, "model") == "Think. 42"
    answer = int(batch.positions("answer")[0, 0])
    assert tok.decode(batch.input_ids[0, : answer + 1]).endswith("<|model|>\n")


def test_real_chat_template_shapes_and_errors():
    with pytest.raises(ConfigError, match="chat_template"):
        render_chat(tiny_tokenizer(), ["hi"])
    with pytest.raises(ConfigError, match="role"):
        render_chat(chat_tokenizer(), [[{"role": "tool", "content": "x"}]])
    with pytest.raises(ConfigError, match="selector"):
        render_chat(chat_tokenizer(), ["x"]).positions("middle")


def test_prompt_sets(tmp_path):
    for name in SHIPPED:
        assert load_prompts(name)
    assert len(load_prompts("harmful_train")) == len(load_prompts("harmless_train")) == 40
    assert len(load_prompts("harmful_test")) == len(load_prompts("harmless_test")) == 16
    (tmp_path / "p.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "p.jsonl").write_text('{"instruction": "x"}\n{"prompt": "y"}\n')
    (tmp_path / "p.txt").write_text("# comment\none\n\ntwo\n")
    assert load_prompts(tmp_path / "p.json") == ["a", "b"] and load_prompts(tmp_path / "p.jsonl") == ["x", "y"]
    assert load_prompts(tmp_path / "p.txt") == ["one", "two"]
    with pytest.raises(DictionaryNotFoundError):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(ConfigError):
        load_prompts(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_phrase_score_equals_brute_force_teacher_forcing(factory):
    model, tok = factory(), chat_tokenizer()
    prompts = ["Hi?", "Do it now, please."]
    score = RefusalScore(refusal=("No way", "Nope"), compliance=("Yes sir", "Y"))
    with torch.no_grad():
        got = score(model, tok, render_chat(tok, prompts))
        expected = []
        for p in prompts:
            ids = render_chat(tok, [p]).input_ids[0].tolist()
            lps = []
            for phrase in ("No way", "Nope", "Yes sir", "Y"):
                t = tok.encode(phrase, add_special_tokens=False)
                lp = model(torch.tensor([ids + t])).logits[0].log_softmax(-1)
                lps.append(sum(lp[len(ids) - 1 + j, t[j]] for j in range(len(t))))
            lps = torch.stack(lps)
            expected.append(lps[:2].logsumexp(0) - lps[2:].logsumexp(0))
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-4)


def test_first_token_score_is_the_logit_gap():
    model, tok = tiny_llama(), chat_tokenizer()
    batch = render_chat(tok, ["Hi?"])
    score = RefusalScore(refusal=("No", "Never"), compliance=("Yes",), mode="first_token")
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits[0, -1]
        expected = logits[ord("N")] - logits[ord("Y")]  # 'No' and 'Never' share their first byte
        assert float(score(model, tok, batch)[0]) == pytest.approx(float(expected), abs=1e-4)
    with pytest.raises(ConfigError, match="share"):
        RefusalScore(refusal=("Yes",), compliance=("Yes",)).openers(tok)
    with pytest.raises(ConfigError):
        RefusalScore(mode="sampled")


def test_refusal_strings_and_generation():
    assert is_refusal("I’m sorry, but I can't do that") and not is_refusal("Sure, here you go")
    assert refusal_rate(["As an AI, no.", "Ok", "I cannot", "Fine"]) == 0.5
    with pytest.raises(ConfigError):
        refusal_rate([])
    tok = chat_tokenizer()
    answers = generate_answers(tiny_llama(), tok, render_chat(tok, ["Hi?", "Hello there?"]), max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
