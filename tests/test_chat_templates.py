"""`template: tokenizer`: real chat templates train every assistant turn (found by rendering), prompts equal what
`apply_chat_template(..., add_generation_prompt=True)` gives after a save and reload, generation stops at the
end-of-turn token, and saved models carry the chat template and those stop tokens."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, run_cli, shared, tiny_recipe, write_recipe

TEMPLATES = ["llama-3-instruct", "qwen2.5-instruct", "mistral-instruct", "gemma-it", "phi-3", "zephyr", "chatml"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>",
           "<end_of_turn>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CONVERSATION = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue. "},
                {"role": "user", "content": "And another?"}, {"role": "assistant", "content": "Green"}]


def chat_tokenizer(name: str):
    """The real GPT-2 tokenizer with the templates' special tokens added and a real chat template set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    tok.pad_token = tok.eos_token
    with open(shared("chat_templates", "chat_templates", f"{name}.jinja"), encoding="utf-8") as fh:
        tok.chat_template = fh.read()
    return tok


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_assistant_turn_is_trained_and_prompts_match_apply_chat_template(name, tmp_path):
    from transformers import AutoTokenizer

    from sft.data.encode import encode, encode_prompts
    from sft.data.templates import get_template

    tok = chat_tokenizer(name)
    tpl = get_template("tokenizer", tok)
    segs = tpl.render(CONVERSATION, None)
    trained = [t for t, on in segs if on]
    assert len(trained) == 2  # both answers, not only the last
    assert trained[0].startswith("Blue.") or trained[0].startswith(" Blue.")
    assert trained[1].startswith("Green")
    for t in trained:  # the end-of-turn marker is trained (the model learns to stop); user text never is
        assert t.endswith(tpl.end_of_turn) and "colour" not in t and "another" not in t
    assert "".join(t for t, _ in segs) == tok.apply_chat_template(CONVERSATION, tokenize=False)

    # the loss mask: only the answers' tokens, and with loss: false an answer is context
    rec = {"messages": CONVERSATION, "task": "t", "source": "s"}
    feat = encode([rec], tok, "tokenizer", arch="causal", max_length=4096).features[0]
    labelled = tok.decode([i for i, lab in zip(feat["input_ids"], feat["labels"]) if lab != -100])
    assert "Green" in labelled and "Blue" in labelled and "colour" not in labelled
    quiet = [dict(CONVERSATION[0]), {**CONVERSATION[1], "loss": False}, *CONVERSATION[2:]]
    feat2 = encode([{**rec, "messages": quiet}], tok, "tokenizer", arch="causal", max_length=4096).features[0]
    assert "Blue" not in tok.decode([i for i, lab in zip(feat2["input_ids"], feat2["labels"]) if lab != -100])

    # what sft feeds the model at inference == what a server builds from the saved tokenizer
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    prompt_msgs = CONVERSATION[:3]
    mine = encode_prompts([{"messages": prompt_msgs}], tok, "tokenizer", arch="causal")[0]
    theirs = _ids(reloaded.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=True))
    assert mine == theirs


def test_generation_markers_give_transformers_assistant_mask():
    """Where a template has {% generation %} markers, sft's labels equal transformers' assistant token mask."""
    from sft.data.encode import encode

    tok = chat_tokenizer("chatml")
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}{{ m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    feat = encode([{"messages": CONVERSATION, "task": "t", "source": "s"}], tok, "tokenizer", arch="causal",
                  max_length=4096).features[0]
    ids, mask, n = list(out["input_ids"]), list(out["assistant_masks"]), len(feat["input_ids"])
    assert feat["input_ids"] == ids[:n] and not any(mask[n:])  # sft stops after the last answer's end of turn
    assert [int(lab != -100) for lab in feat["labels"]] == mask[:n]
    assert sum(mask) > 0


def test_stop_ids_include_the_end_of_turn_token():
    from sft.data.templates import get_template
    from sft.data.templates import stop_token_ids

    for name, eot in (("llama-3-instruct", "<|eot_id|>"), ("qwen2.5-instruct", "<|im_end|>"),
                      ("gemma-it", "<end_of_turn>"), ("phi-3", "<|end|>")):
        tok = chat_tokenizer(name)
        ids = stop_token_ids(tok, tuple(get_template("tokenizer", tok).stop))
        assert ids == [tok.eos_token_id, tok.convert_tokens_to_ids(eot)], name


def test_template_tokenizer_refusals(tmp_path):
    from sft.data.templates import get_template
    from sft.errors import RecipeError
    from sft.recipe import recipe_from_dict

    tok = chat_tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(RecipeError, match="data.template: template: tokenizer needs a tokenizer with a chat_template"):
        get_template("tokenizer", tok)
    with pytest.raises(RecipeError, match="data.chat_template_path is read only with template: tokenizer"):
        recipe_from_dict({"data": {"sources": [{"path": "builtin:synthetic"}], "chat_template_path": "x.jinja"}})
    r = tiny_recipe("gpt2", tmp_path / "o", data__template="tokenizer")  # a BPE built from the data has none
    res = run_cli("train", write_recipe(tmp_path / "r.yaml", r))
    assert res.returncode == 2 and "data.template" in res.stderr and "pretrained tokenizer" in res.stderr


def test_train_with_the_tokenizers_template_saves_it_and_stops_at_end_of_turn(tmp_path):
    """A tiny Llama trained with template: tokenizer and a chat_template_path: the saved tokenizer carries the
    template, generation_config.json lists EOS and <|im_end|>, and eval prompts are apply_chat_template's."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = chat_tokenizer("chatml")
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "tok")
    AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256).save_pretrained(tmp_path / "llama")
    r = tiny_recipe("gpt2", tmp_path / "out", steps=8, data__template="tokenizer",
                    data__chat_template_path=shared("chat_templates", "chat_templates", "qwen2.5-instruct.jinja"))
    r["model"] = {"name": str(tmp_path / "llama"), "init": "scratch", "tokenizer": str(tmp_path / "tok")}
    r["data"]["max_length"] = 256
    r["eval"].update(after=True, metrics=["perplexity", "exact_match"], max_samples=4)
    r["lora"] = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    res = run_cli("train", write_recipe(tmp_path / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    saved = AutoTokenizer.from_pretrained(out)
    assert "You are Qwen" in saved.chat_template  # the chat_template_path's template travels with the model
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [saved.eos_token_id, saved.convert_tokens_to_ids("<|im_end|>")]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows and all("messages" in row for row in rows)
    msgs = [m for m in rows[0]["messages"] if m["role"] != "assistant"]
    prompt = saved.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and "You are Qwen" in prompt
    assert os.path.exists(out / "adapter_config.json")


JINJA = ("{% if system %}<<SYS>>{{ system }}<</SYS>>\n{% endif %}\n"
         "{% for m in history %}\n  {{ m.role }}: {{ m.content }}\n{% endfor %}\n"
         "### Task: {{ instruction }}{% if input %} [{{ input }}]{% endif %}\n### Answer:\n")


@pytest.mark.parametrize("name", ["alpaca", "chatml", "plain", JINJA])
@pytest.mark.parametrize("system", [None, "Answer in one word.\nBe \"exact\"; café."])
def test_builtin_templates_are_saved_as_chat_templates(name, system, tmp_path):
    """Models trained with a built-in template carry it as a chat template: a server's
    apply_chat_template(..., add_generation_prompt=True) feeds exactly the ids sft's eval and generate feed."""
    from transformers import AutoTokenizer

    from sft.data.encode import encode_prompts
    from sft.data.templates import chat_template_for

    tok = AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))
    tok.chat_template = chat_template_for(name, system)
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    with_input = [{"role": "user", "content": "Translate.", "input": "Bonjour"}]
    for msgs in (CONVERSATION[:1], CONVERSATION[:3], [{"role": "system", "content": "Own system."}] + CONVERSATION[:3],
                 with_input):
        mine = encode_prompts([{"messages": msgs}], tok, name, arch="causal", system=system)[0]
        theirs = _ids(reloaded.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        assert mine == theirs, (name, msgs)


def test_a_trained_run_carries_its_template(trained_full):
    from transformers import AutoTokenizer

    from sft.data.encode import encode_prompts

    saved = AutoTokenizer.from_pretrained(trained_full)
    rows = [json.loads(x) for x in (trained_full / "predictions.jsonl").read_text().splitlines()]
    for row in rows[:5]:
        msgs = [m for m in row["messages"] if m["role"] != "assistant"]
        mine = encode_prompts([{"messages": msgs}], saved, "alpaca", arch="causal")[0]
        assert _ids(saved.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)) == mine


def test_jinja_templates_train_every_assistant_turn_they_write():
    from sft.data.templates import get_template

    with_history = ("{% for m in history %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                    "user: {{ instruction }}\nassistant: ")
    segs = get_template(with_history).render(CONVERSATION, None)
    assert [t for t, on in segs if on] == [" Blue. ", "Green"]  # the earlier answer, verbatim, and the final one
    quiet = [CONVERSATION[0], {**CONVERSATION[1], "loss": False}, *CONVERSATION[2:]]
    assert [t for t, on in get_template(with_history).render(quiet, None) if on] == ["Green"]
    shouting = "{% for m in history %}{{ m.content | upper }}\n{% endfor %}{{ instruction }}\n"
    assert [t for t, on in get_template(shouting).render(CONVERSATION, None) if on] == ["Green"]  # not verbatim
    no_history = "Q: {{ instruction }}\nA: "
    assert [t for t, on in get_template(no_history).render(CONVERSATION, None) if on] == ["Green"]


def test_conversations_a_template_refuses_are_dropped_and_counted():
    """Gemma's template raises on a system turn: those rows are dropped with the template's reason, not the run."""
    from sft.data.encode import encode

    tok = chat_tokenizer("gemma-it")
    ok = {"messages": CONVERSATION[:2], "task": "t", "source": "s"}
    bad = {"messages": [CONVERSATION[0], CONVERSATION[0], CONVERSATION[1]], "task": "t", "source": "s"}
    enc = encode([ok, bad, ok], tok, "tokenizer", arch="causal", max_length=4096)
    assert len(enc.features) == 2
    (reason, n), = enc.report.to_dict()["dropped"].items()
    assert n == 1 and "rejected by the chat template" in reason and "alternate" in reason


# ---- a built-in template is its chat template: one file, rendered by transformers' engine -------------------

_TEXT = st.lists(st.sampled_from(list("ab <>\n{}\"'é#:|_/") + ["<think>", "\n\n", "### ", "<|im_end|>"]),
                 max_size=6).map("".join)
_CALL = st.fixed_dictionaries({"name": st.sampled_from(["f", "get_w", 'x"y']), "arguments": st.dictionaries(
    st.sampled_from(["a", "é"]), st.one_of(st.integers(), _TEXT), max_size=2)})


def _message(role):
    if role == "assistant":
        return st.fixed_dictionaries({"role": st.just(role), "content": _TEXT}, optional={
            "tool_calls": st.lists(_CALL, min_size=1, max_size=2), "reasoning": _TEXT.filter(bool)})
    if role == "user":
        return st.fixed_dictionaries({"role": st.just(role), "content": _TEXT}, optional={"input": _TEXT})
    return st.fixed_dictionaries({"role": st.just(role), "content": _TEXT})


_CONVERSATION = st.lists(st.sampled_from(["system", "user", "user", "assistant", "tool"]), min_size=1,
                         max_size=5).flatmap(lambda roles: st.tuples(*[_message(r) for r in roles]))
_TOOL_SPECS = st.one_of(st.none(), st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": (
    st.fixed_dictionaries({"name": _TEXT, "parameters": st.just({"type": "object"})}))}), min_size=1, max_size=2))


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(msgs=_CONVERSATION, tools=_TOOL_SPECS, system=st.one_of(st.none(), _TEXT),
       name=st.sampled_from(["alpaca", "chatml", "plain"]))
def test_builtin_trained_text_is_the_saved_templates_text(gpt2_tokenizer, msgs, tools, system, name):
    """What sft trains on (every segment, trained or not) is what the saved template renders through
    apply_chat_template for the same messages; the generation prompt is sft's inference prompt."""
    from sft.data.templates import TEMPLATES, chat_template_for, hub_message, render_prompt

    msgs = [dict(m) for m in msgs]
    tok = gpt2_tokenizer
    tok.chat_template = chat_template_for(name, system)
    assert "{%- generation" not in tok.chat_template  # saved without the training tags
    tpl = TEMPLATES[name]
    text = "".join(t for t, _ in tpl.render(msgs, system, tools))
    saved = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    eos = tok.eos_token if msgs[-1]["role"] == "assistant" and name != "chatml" else ""
    assert saved == text + eos
    if msgs[-1]["role"] != "assistant":
        assert tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True) == \
            render_prompt(tpl, msgs, system, tools)
    hub = [hub_message(m) if m["role"] != "user" else m for m in msgs]  # the Hub's shape renders the same
    assert tok.apply_chat_template(hub, tools=tools, tokenize=False) == saved


def test_each_builtin_template_is_one_file():
    from sft.data.templates import TEMPLATES

    folder = os.path.join(ROOT, "sft", "data", "chat_templates")
    assert set(TEMPLATES) == {f[:-6] for f in os.listdir(folder) if f.endswith(".jinja")} - {"tools"}
    assert {"alpaca", "chatml", "plain"} <= set(TEMPLATES) and all(t.doc for t in TEMPLATES.values())
    assert TEMPLATES["chatml"].stop == ("<|im_end|>",) and TEMPLATES["alpaca"].stop == ("\n\n### Instruction:",)
    assert TEMPLATES["chatml"].markers == ("<|im_start|>", "<|im_end|>") and TEMPLATES["alpaca"].markers == ()
