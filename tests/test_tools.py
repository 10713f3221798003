"""Agentic and reasoning data: every input form converts into the one record without loss, real tool-aware chat
templates render it exactly as `apply_chat_template` does (prompts, trained spans, generation masks), the built-in
templates' saved chat templates write the same tools, calls and reasoning, tool calls parse per family, and the
tool-call metrics score them."""

from __future__ import annotations

import json
import os
import re

import pytest

from sft.data import formats
from sft.data.encode import encode
from sft.data.pipeline import records_from_rows
from sft.data.clean import DropReport
from sft.data.templates import (ChatTemplate, chat_template_for, get_template, hub_message, render_prompt,
                                render_training)
from sft.metrics import score_texts
from sft.recipe import SourceConfig
from sft.toolcalls import parse, split_reasoning

from conftest import SHARED, ROOT, run_cli

TRL_TEMPLATES = os.path.join(os.path.dirname(__import__("trl").__file__), "chat_templates")

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "description": "Time now", "parameters": {
             "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]
AGENT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
         {"role": "tool", "content": "21C", "name": "get_weather"},
         {"role": "assistant", "content": "It is 21C in Paris.", "reasoning": "The tool said 21C."}]
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
# the real tool-aware templates TRL ships; each renders tools, structured calls and tool turns its own way
REAL = ["qwen2_5", "qwen3", "qwen3_5_think", "llama3_1", "llama3_2", "gptoss", "deepseekv3"]
TRAINING = ["qwen2_5_training", "qwen3_training", "qwen3_5_think_training", "gptoss_training",
            "deepseekv3_training"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|start|>",
            "<|end|>", "<|message|>", "<|channel|>", "<|call|>", "<|return|>", "<|constrain|>",
            "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>",
            "<｜tool▁sep｜>", "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁outputs▁end｜>"]


def _tokenizer(template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(SHARED, "tokenizers", "gpt2"))
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})  # atomic markers, as the real tokenizers have
    if template:
        tok.chat_template = open(os.path.join(TRL_TEMPLATES, template + ".jinja")).read()
    return tok


def _hub(msgs, string_args=False):
    out = [hub_message(m) for m in msgs]
    if string_args:
        for m in out:
            for c in m.get("tool_calls", ()):
                c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    return out


needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared is not present")


# ---- every input form converts into the one record -------------------------------------------------------

def _convert(fmt, rows, columns=None):
    out, drops, edits = formats.convert_rows(fmt, rows, columns or {})
    return out, drops, edits


def test_openai_messages_with_tool_calls_and_null_content():
    row = {"messages": [
        {"role": "user", "content": "Weather in Paris and the time in CET?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "call_2", "content": {"time": "10:00"}},
        {"role": "assistant", "content": "21C, and it is 10:00."}], "tools": json.dumps(TOOLS)}
    (msgs, _, tools), = _convert("messages", [row])[0]
    assert tools == TOOLS
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_1"},
        {"name": "get_time", "arguments": {"zone": "CET"}, "id": "call_2"}]}
    assert msgs[2] == {"role": "tool", "content": "21C", "tool_call_id": "call_1"}
    assert json.loads(msgs[3]["content"]) == {"time": "10:00"}  # a structured tool result keeps its JSON


def test_trl_messages_bare_tool_specs_and_reasoning_fields():
    bare = [t["function"] for t in TOOLS]  # {name, description, parameters} without the function wrapper
    row = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "reasoning_content": "Need the tool.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "name": "get_weather", "content": "3C"},
        {"role": "assistant", "content": "<think>\nCold.\n</think>\n\nIt is 3C."}], "tools": bare}
    (msgs, _, tools), = _convert("messages", [row])[0]
    assert tools == TOOLS
    assert msgs[1]["reasoning"] == "Need the tool." and msgs[1]["tool_calls"][0]["arguments"] == {"city": "Oslo"}
    assert msgs[3] == {"role": "assistant", "content": "It is 3C.", "reasoning": "Cold."}


def test_llamafactory_typed_parts_reasoning_and_tool_call():
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Weather in Rome?"}]},
        {"role": "assistant", "content": [
            {"type": "reasoning", "value": "Call the tool."},
            {"type": "tool_call", "value": '{"name": "get_weather", "arguments": {"city": "Rome"}}'},
            {"type": "tool_call", "value": {"name": "get_time", "arguments": {"zone": "CET"}}}]},
        {"role": "tool", "content": [{"type": "text", "value": "25C"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "Hot."}, {"type": "text", "value": "25C."}]}]}
    rows = [row] * 50
    out, drops, _ = _convert("messages", rows)
    assert len(out) == 50 and not drops  # was: 50 of 50 lost to "unsupported content part"
    msgs = out[0][0]
    assert msgs[1] == {"role": "assistant", "content": "", "reasoning": "Call the tool.", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "get_time", "arguments": {"zone": "CET"}}]}
    assert msgs[3] == {"role": "assistant", "content": "25C.", "reasoning": "Hot."}


def test_sharegpt_function_call_observation_and_unparsable_call_counted():
    good = {"conversations": [
        {"from": "human", "value": "Weather in Lyon?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Lyon"}}'},
        {"from": "observation", "value": '{"temp": 18}'},
        {"from": "gpt", "value": "18 degrees."}], "tools": json.dumps(TOOLS[:1])}
    bad = {"conversations": [{"from": "human", "value": "Weather?"},
                             {"from": "function_call", "value": "get_weather(city='Lyon')"},
                             {"from": "observation", "value": "18"}, {"from": "gpt", "value": "18."}]}
    out, drops, edits = _convert("sharegpt", [good, bad])
    assert len(out) == 2 and not drops
    msgs, _, tools = out[0]
    assert tools == TOOLS[:1] and "Available tools" not in json.dumps(msgs)  # nothing pasted into the system text
    assert msgs[1]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Lyon"}}]
    assert msgs[2] == {"role": "tool", "content": '{"temp": 18}', "name": "get_weather"}
    assert out[1][0][1] == {"role": "assistant", "content": "get_weather(city='Lyon')"}
    assert edits == {"function_call that is not a JSON call, kept as text": 1}


@needs_shared
def test_glaive_demo_converts_every_call():
    rows = json.load(open(os.path.join(SHARED, "data", "llamafactory", "glaive_toolcall_en_demo.json")))
    out, drops, edits = _convert("sharegpt", rows)
    assert len(out) == 300 and not drops and not edits
    assert sum(len(m.get("tool_calls", ())) for msgs, _, _ in out for m in msgs) == 211
    assert sum(1 for _, _, t in out if t) == 191  # the other 109 rows have "tools": "[]"


def test_malformed_structure_is_a_counted_drop():
    rows = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                {"function": {"name": "f", "arguments": "{not json"}}]}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": "[{"},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                {"function": {"name": "f", "arguments": [1, 2]}}]}]}]
    surrogate = {"name": "f", "arguments": {"city": "\ud800"}}
    rows += [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [surrogate]}]},
             {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
              "tools": [{"name": "f", "description": "\udfff"}]}]
    deep: dict = {}
    for _ in range(__import__("sys").getrecursionlimit() + 100):  # arguments nested beyond what can be walked
        deep = {"a": deep}
    rows.append({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"name": "f", "arguments": deep}]}]})
    out, drops, _ = _convert("messages", rows)
    assert not out and drops == {"null message content": 1, "tool call arguments is not valid JSON": 1,
                                 "'tools' is not valid JSON": 1, "tool call arguments are not a JSON object": 1,
                                 "text is not valid Unicode (a lone surrogate)": 2, "structure nested too deeply": 1}


def _records(rows, reasoning="train"):
    report = DropReport()
    src = SourceConfig(path="x.jsonl")
    recs, dropped = records_from_rows(src, "messages", rows, "x", report, reasoning)
    return recs, report


TWO_QUERIES = {"messages": [{"role": "user", "content": "2+2?"},
                            {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
                            {"role": "user", "content": "3+3?"},
                            {"role": "assistant", "content": "6", "reasoning_content": "three and three"}]}


def test_reasoning_followed_by_another_turn_splits_the_conversation():
    recs, report = _records([TWO_QUERIES])
    assert [len(r["messages"]) for r in recs] == [2, 4]
    assert recs[1]["messages"][1].get("loss") is False  # trained once, in the first example
    assert recs[1]["messages"][3].get("loss", True)
    assert report.edited == {"x: conversation split after turns with reasoning": 1}
    agent = {"messages": [{**m, "reasoning": "I need the weather."} if m.get("tool_calls") else m for m in AGENT]}
    recs, _ = _records([agent])
    assert [len(r["messages"]) for r in recs] == [3, 5]


def test_gptoss_tool_call_reasoning_is_trained_as_generated():
    """gpt-oss drops a tool-call turn's reasoning once a final answer follows: the call is trained in its own
    example, with its reasoning, and the final answer in the whole conversation."""
    tok = _tokenizer("gptoss")
    agent = {"messages": [{**m, "reasoning": "I need the weather."} if m.get("tool_calls") else m
                          for m in AGENT[1:]], "tools": TOOLS}
    recs, _ = _records([agent])
    tpl = get_template("tokenizer", tok)
    trained = [[t for t, tr in render_training(tpl, r["messages"], None, TOOLS) if tr] for r in recs]
    assert len(trained) == 2 and all(len(t) == 1 for t in trained)
    assert "I need the weather." in trained[0][0] and "to=functions.get_weather" in trained[0][0]
    assert trained[1][0].startswith("<|channel|>analysis<|message|>The tool said 21C.")
    dropped, _ = _records([TWO_QUERIES], "drop")
    assert len(dropped) == 1 and not any("reasoning" in m for m in dropped[0]["messages"])


def test_qwen3_trains_each_turn_as_generated():
    """Qwen3 drops the reasoning of turns before the last user query: turn 1 is trained in its own example, with
    its reasoning, as the model generates it; nothing trains turn 1 without it."""
    tok = _tokenizer("qwen3")
    recs, _ = _records([TWO_QUERIES])
    tpl = get_template("tokenizer", tok)
    trained = [[t for t, tr in render_training(tpl, r["messages"], None) if tr] for r in recs]
    assert trained == [["<think>\ntwo and two\n</think>\n\n4<|im_end|>"],
                       ["<think>\nthree and three\n</think>\n\n6<|im_end|>"]]
    # the first example's prompt is exactly the generation prompt a server sends for that turn
    first = "".join(t for t, _ in render_training(tpl, recs[0]["messages"], None))
    assert first.startswith(tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                                    add_generation_prompt=True))


@pytest.mark.parametrize("mode", ["mask", "train"])
def test_reasoning_mask_keeps_it_out_of_the_loss(mode):
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "two and two"}]}
    recs, _ = _records([row], mode)
    for tpl in (get_template("chatml"), get_template("tokenizer", _tokenizer("qwen3"))):
        trained = "".join(t for t, tr in render_training(tpl, recs[0]["messages"], None) if tr)
        assert ("two and two" in trained) == (mode == "train") and "4" in trained


# ---- real templates render the record exactly as apply_chat_template ---------------------------------------

@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("case", ["tools", "chat"])
def test_real_template_prompt_and_text_equal_apply_chat_template(name, case):
    tok = _tokenizer(name)
    msgs, tools = (AGENT, TOOLS) if case == "tools" else (CHAT, None)
    if name == "deepseekv3" and case == "tools":
        tools = None  # DeepSeek-V3's template ignores tools= (such examples are dropped; see the next test)
    tpl = get_template("tokenizer", tok)
    string_args = name == "deepseekv3"  # it concatenates arguments as JSON text
    segs = render_training(tpl, msgs, None, tools)
    text = "".join(t for t, _ in segs)
    full = tok.apply_chat_template(_hub(msgs, string_args), tools=tools, tokenize=False)
    assert full.startswith(text) and not full[len(text):].strip()
    prompt = render_prompt(tpl, msgs, None, tools)
    assert prompt == tok.apply_chat_template(_hub(msgs[:-1], string_args), tools=tools, tokenize=False,
                                             add_generation_prompt=True)
    # each assistant turn is trained from the end of its generation prompt through its end-of-turn marker
    trained = [t for t, tr in segs if tr]
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    assert len(trained) == len(turns)
    for span, i in zip(trained, turns):
        gen = tok.apply_chat_template(_hub(msgs[:i], string_args), tools=tools, tokenize=False,
                                      add_generation_prompt=True)
        start = text.index(span)
        if full.startswith(gen) and name != "deepseekv3":
            assert start == len(gen), (name, i)
        assert span.endswith(tpl.markers) or span.endswith(tpl.end_of_turn)
        for c in msgs[i].get("tool_calls", ()):
            assert c["name"] in span and "Paris" in span
        if msgs[i]["content"]:
            assert msgs[i]["content"] in span
    # the tokenised example equals the tokenised template text, with labels on exactly the trained spans
    enc = encode([{"messages": msgs, "task": "t", "source": "s", **({"tools": tools} if tools else {})}], tok,
                 "tokenizer", arch="causal", max_length=10 ** 6)
    ids, labels = enc.features[0]["input_ids"], enc.features[0]["labels"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode([t for t in labels if t != -100]) == "".join(trained)


def test_template_that_ignores_tools_drops_the_example_with_a_reason():
    tok = _tokenizer("deepseekv3")
    enc = encode([{"messages": AGENT, "task": "t", "source": "s", "tools": TOOLS}], tok, "tokenizer",
                 arch="causal", max_length=10 ** 6)
    assert not enc.features and enc.report.dropped == {"rejected by the chat template (it does not render tools)": 1}


@pytest.mark.parametrize("name", TRAINING)
@pytest.mark.parametrize("case", ["tools", "chat"])
def test_training_template_labels_equal_the_assistant_mask(name, case):
    tok = _tokenizer(name)
    msgs, tools = (AGENT, TOOLS) if case == "tools" else (CHAT, None)
    if name == "deepseekv3_training":
        tools = None  # it ignores tools=

    out = tok.apply_chat_template(_hub(msgs), tools=tools, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    enc = encode([{"messages": msgs, "task": "t", "source": "s", **({"tools": tools} if tools else {})}], tok,
                 "tokenizer", arch="causal", max_length=10 ** 6)
    ids, labels = enc.features[0]["input_ids"], enc.features[0]["labels"]
    n = len(ids)
    assert ids == out["input_ids"][:n] and not any(out["assistant_masks"][n:])
    assert [int(x != -100) for x in labels] == out["assistant_masks"][:n]


# ---- built-in templates: one tool format, and the saved chat template writes the same -------------------

@pytest.mark.parametrize("spec", ["chatml", "alpaca", "plain"])
@pytest.mark.parametrize("system", [None, "You help."])
def test_builtin_saved_template_renders_tools_calls_and_reasoning_identically(spec, system):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(SHARED, "tokenizers", "gpt2"))
    tok.chat_template = chat_template_for(spec, system)
    tpl = get_template(spec)
    for msgs, tools in ((AGENT, TOOLS), (AGENT[1:], TOOLS), (CHAT, None), (AGENT[1:3], TOOLS)):
        text = "".join(t for t, _ in render_training(tpl, msgs, system, tools))
        saved = tok.apply_chat_template(_hub(msgs), tools=tools, tokenize=False)
        assert saved.startswith(text) and saved[len(text):] in ("", "\n", tok.eos_token), (spec, msgs[-1])
        assert tok.apply_chat_template(_hub(msgs[:-1]), tools=tools, tokenize=False, add_generation_prompt=True) \
            == render_prompt(tpl, msgs, system, tools)
    text = "".join(t for t, _ in render_training(tpl, AGENT, None, TOOLS))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<think>\nThe tool said 21C.\n</think>\n\nIt is 21C in Paris." in text
    assert "<tools>\n" + json.dumps(TOOLS[0]) in text


# ---- parsing generated calls, and the metrics ------------------------------------------------------------

CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    '<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n'
    '</parameter>\n</function>\n</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"days": 2, "city": "Paris"}}',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]',
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 2}',
    ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris", "days": 2}<|call|>',
    '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
    '{"city": "Paris", "days": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'])
def test_each_family_parses(text):
    got = parse(text)
    assert got.attempted and got.valid and got.calls == [CALL]


def test_real_template_renderings_parse_back():
    """What each real template writes for a call is what its parser reads (the model generates that text)."""
    for name in ["qwen2_5", "qwen3", "qwen3_5_think", "llama3_1", "gptoss", "deepseekv3"]:
        tok = _tokenizer(name)
        msgs = AGENT[1:3]
        tpl = get_template("tokenizer", tok)
        span = next(t for t, tr in render_training(tpl, msgs, None, TOOLS if name != "deepseekv3" else None) if tr)
        span = span.removesuffix(tpl.end_of_turn)  # generation stops at the end-of-turn marker
        assert parse(span).calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}], name


def test_plain_answers_are_not_calls_and_reasoning_splits():
    assert not parse("It is sunny.").attempted and not parse('{"answer": 4}').attempted
    bad = parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>')
    assert bad.attempted and not bad.valid
    assert split_reasoning("<think>\nadd\n</think>\n\n4") == ("add", "4")
    assert split_reasoning("add\n</think>\n\n4") == ("add", "4")  # the opening tag was in the prompt
    assert split_reasoning("<|channel|>analysis<|message|>add<|end|><|start|>assistant<|channel|>final"
                           "<|message|>4") == ("add", "4")
    assert split_reasoning("4") == (None, "4")


def test_tool_metrics():
    ref = '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "b", ' \
          '"arguments": {"y": [1, 2]}}\n</tool_call>'
    preds = [
        '<tool_call>\n{"name": "b", "arguments": {"y": [1, 2]}}\n</tool_call><tool_call>{"name": "a", '
        '"arguments": {"x": 1.0}}</tool_call>',  # parallel calls in another order, 1.0 == 1: exact
        '<tool_call>{"name": "a", "arguments": {"x": 2}}</tool_call><tool_call>{"name": "b", "arguments": '
        '{"y": [1, 2]}}</tool_call>',  # right names, one wrong argument
        '<tool_call>{"name": "a", "arguments": {"x": </tool_call>',  # does not parse
        "I cannot help.",  # no call
        "plain answer"]  # its reference is not a call: left out of the tool metrics
    refs = [ref, ref, ref, ref, "plain answer"]
    corpus, per = score_texts(preds, refs, ["tool_call_exact", "tool_name_accuracy", "tool_call_parse_rate",
                                            "exact_match"])
    assert corpus["tool_call_exact"] == pytest.approx(1 / 4)
    assert corpus["tool_name_accuracy"] == pytest.approx(2 / 4)
    assert corpus["tool_call_parse_rate"] == pytest.approx(2 / 3)
    assert "tool_call_exact" not in per[4] and per[4]["exact_match"] == 1.0


def test_score_reads_structured_tool_calls(tmp_path):
    path = tmp_path / "preds.jsonl"
    ref = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    rows = [{"prediction": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                               "arguments": '{"city": "Paris"}'}}],
             "reference": ref},
            {"prediction": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}],
             "reference": ref}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("score", str(path), "--metrics", "tool_call_exact,tool_name_accuracy", "--out", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr
    m = json.load(open(tmp_path / "s" / "metrics.json"))["metrics"]
    assert m["tool_call_exact"] == 0.5 and m["tool_name_accuracy"] == 1.0


# ---- the synthetic families, learnt by a quickstart-sized model -------------------------------------------

TOOL_RECIPE = """
model:
  name: gpt2
  init: scratch
  config_overrides: {{n_layer: 2, n_embd: 128, n_head: 4, n_positions: 512, resid_pdrop: 0, embd_pdrop: 0,
                     attn_pdrop: 0, activation_function: gelu_pytorch_tanh}}
  tokenizer: bpe
  tokenizer_vocab_size: 1200
  tokenizer_digits: 2
data:
  sources:
    - {{path: "builtin:synthetic", tasks: [tool_calling], num_examples: 8000}}
  eval_sources:
    - {{path: "builtin:synthetic", split: eval, tasks: [tool_calling], num_examples: 60}}
  template: chatml
  max_length: 512
train:
  output_dir: {out}
  epochs: 1
  batch_size: 8
  learning_rate: 1.0e-3
  lr_scheduler: cosine
  warmup_steps: 20
  logging_steps: 50
  report_to: none
eval:
  before: false
  batch_size: 60
  metrics: [exact_match, tool_call_exact, tool_name_accuracy, tool_call_parse_rate]
  generation: {{max_new_tokens: 60}}
"""


def test_synthetic_families_are_structured():
    from sft.data import synthetic

    rows = synthetic.generate(6, seed=1, tasks=["tool_calling", "addition_reasoning", "addition"])
    assert [r["task"] for r in rows] == ["tool_calling", "addition_reasoning", "addition"] * 2
    assert rows[0]["tools"] == synthetic.TOOLS and rows[0]["messages"][1]["tool_calls"]
    assert rows[1]["messages"][1]["reasoning"] and rows[1]["messages"][1]["content"].isdigit()
    assert rows[2]["messages"][0]["role"] == "user"  # the classic families as messages in such a suite
    a, b = map(int, re.findall(r"\d+", rows[1]["messages"][0]["content"]))
    assert int(rows[1]["messages"][1]["content"]) == a + b
    assert synthetic.generate(5, seed=3) == synthetic.generate(5, seed=3)  # the default suite is unchanged
    assert "instruction" in synthetic.generate(1, seed=3)[0]


def test_tiny_model_learns_the_tool_family_and_its_saved_tokenizer_prompts_with_tools(tmp_path):
    recipe = tmp_path / "tools.yaml"
    recipe.write_text(TOOL_RECIPE.format(out=tmp_path / "out"))
    res = run_cli("train", str(recipe), timeout=1200)  # about 130 s on two threads, 210 s on one
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    m = json.load(open(tmp_path / "out" / "metrics.json"))["metrics"]
    assert m["tool_call_exact"] >= 0.5 and m["tool_name_accuracy"] >= 0.9, m
    assert m["tool_call_parse_rate"] >= 0.9, m
    # the run's saved tokenizer prompts a server exactly as training did, tools included
    from transformers import AutoTokenizer

    from sft.data import synthetic

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    row = synthetic.generate(1, seed=7, tasks=["tool_calling"])[0]
    msgs = row["messages"][:1]
    assert tok.apply_chat_template(_hub(msgs), tools=row["tools"], tokenize=False, add_generation_prompt=True) == \
        render_prompt(get_template("chatml"), msgs, None, row["tools"])
    # sft generate with --tools: parsed calls land in the predictions
    inp, tools_file, out = tmp_path / "in.jsonl", tmp_path / "tools.json", tmp_path / "pred.jsonl"
    inp.write_text(json.dumps({"prompt": "Set a 12 minute timer for tea."}) + "\n")
    tools_file.write_text(json.dumps(synthetic.TOOLS))
    res = run_cli("generate", str(tmp_path / "out"), "--input", str(inp), "--out", str(out), "--tools",
                  str(tools_file), "--max-new-tokens", "60")
    assert res.returncode == 0, res.stderr[-2000:]
    pred = json.loads(out.read_text())
    assert pred["tool_calls"][0]["name"] == "set_timer", pred
    # sft chat shows the parsed call, and /tool answers it with a tool turn
    res = run_cli("chat", str(tmp_path / "out"), "--tools", str(tools_file), "--max-new-tokens", "60",
                  input="Set a 12 minute timer for tea.\n/tool {\"ok\": true}\n/exit\n")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(tool call: set_timer {" in res.stdout and res.stdout.count("model> ") == 2, res.stdout


def test_generate_refuses_a_bad_tools_file(tmp_path):
    bad = tmp_path / "tools.json"
    bad.write_text("[{")
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "x"}\n')
    res = run_cli("generate", str(tmp_path), "--input", str(inp), "--tools", str(bad))
    assert res.returncode == 2 and "tools" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_calls_and_reasoning_written_in_special_tokens_are_read_from_the_raw_answer():
    """gpt-oss channels and DeepSeek / Mistral call markers are special tokens in those models' tokenizers: the
    answer decoded without them hides the call, so the answer with them is read instead."""
    from sft.evaluation.generate import decode_raw
    from sft.toolcalls import structure_answer

    tok = _tokenizer()
    raw = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
    ids = tok(raw, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.eos_token_id]
    text = tok.decode(ids, skip_special_tokens=True)
    got = structure_answer(text, decode_raw(tok, ids, [tok.eos_token_id], ()))
    assert got["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    think = "<|channel|>analysis<|message|>R<|end|><|start|>assistant<|channel|>final<|message|>4"
    ids = tok(think, add_special_tokens=False)["input_ids"]
    got = structure_answer(tok.decode(ids, skip_special_tokens=True), decode_raw(tok, ids, [], ()))
    assert got["prediction"] == "4" and got["reasoning"] == "R"
    assert structure_answer("plain", "plain") == {"prediction": "plain"}


def test_a_conversation_whose_turns_cannot_be_located_is_a_counted_drop():
    """One conversation the rendering does not let sft locate is dropped with its reason, not the run's end."""
    tok = _tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}[{{ m['content'] | length }}]"
                         "{{ m['content'] }}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    recs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}], "task": "t",
             "source": "s"} for a in ("hello", "abc")]
    enc = encode(recs, tok, "tokenizer", arch="causal", max_length=10 ** 6)
    assert len(enc.features) == 1
    assert enc.report.dropped == {"rejected by the chat template (its assistant turns cannot be located in the "
                                  "rendering)": 1}


def _junk_strategy():
    from hypothesis import strategies as st

    keys = st.sampled_from(["name", "arguments", "function", "type", "id", "value", "text", "reasoning", "role",
                            "content", "tool_calls", "parameters", "thinking", "reasoning_content", "from"])
    atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                      st.sampled_from(["{", "[]", '{"name": "f", "arguments": {}}', "<think>r</think>a", "tool_call",
                                       "reasoning", "assistant", "user", "tool", "function_call", "observation"]))
    return st.recursive(atoms, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def test_any_structure_converts_or_is_a_counted_drop():
    """Whatever shape tool calls, typed parts, reasoning fields and tools take, a row converts, is cleaned and
    renders in every built-in template, or is a counted drop: never an internal error."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    junk = _junk_strategy()
    part = st.dictionaries(st.sampled_from(["type", "value", "text"]), st.one_of(
        st.sampled_from(["text", "reasoning", "tool_call", "image"]), junk), max_size=3)
    message = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "tool", "system"]), junk)},
        optional={"content": st.one_of(junk, st.lists(part, max_size=3)), "tool_calls": junk,
                  "reasoning_content": junk, "thinking": junk, "function_call": junk, "tool_call_id": junk,
                  "name": junk, "loss_weight": junk})
    row = st.fixed_dictionaries({"messages": st.lists(st.one_of(message, junk), max_size=4)},
                                optional={"tools": junk})
    share = st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
        {"from": st.sampled_from(["human", "gpt", "function_call", "observation", "system"]), "value": junk}),
        max_size=4)}, optional={"tools": junk})
    templates = [get_template(t) for t in ("chatml", "alpaca", "plain")]

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @example(("messages", {"messages": [{"role": "user", "content": [{"type": {}}]}]}), "train")  # found by fuzzing
    @example(("messages", {"messages": [{"role": "assistant", "tool_calls": [{"function": []}]}]}), "mask")
    @given(st.one_of(row.map(lambda r: ("messages", r)), share.map(lambda r: ("sharegpt", r))),
           st.sampled_from(["train", "mask", "drop"]))
    def check(case, reasoning):
        from sft.data.clean import clean_records

        fmt, r = case
        report = DropReport()
        recs, dropped = records_from_rows(SourceConfig(path="x.jsonl"), fmt, [r], "x", report, reasoning)
        assert dropped == sum(report.dropped.values())
        for rec in clean_records(recs, report=DropReport()):
            json.dumps(rec)
            for tpl in templates:
                render_training(tpl, rec["messages"], None, rec.get("tools"))

    check()
