"""Tokenizers that need no download: a byte-level BPE trained on the recipe's own texts (cached), or
plain bytes. The BPE splits numbers into single digits (as Llama and Qwen do) and CJK ideographs into
single characters (as BERT does), so a tiny model learns arithmetic and number formats symbol by symbol
instead of memorising one merged token per number. With `digits` above 1, numbers split instead into groups
of up to that many digits aligned from the right, by place value (12345 -> 1|23|45 at 2, where left-aligned
chunks would give 12|34|5). Each short number is then one token, which a tiny model copies and orders far more
easily than digit pairs (the quickstart's sort: exact match 0-0.05 at 1, 0.22-0.30 at 2). Otherwise a Hub id /
directory loads through AutoTokenizer.

Special tokens follow T5's numbering (pad 0, eos 1, unk 2) so the same tokenizer serves a scratch
GPT-2 (eos doubles as bos) and a scratch T5 (decoder start = pad).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from .errors import ModelError
from .families import path_of

BUILT = ("bpe", "byte")


def cache_root() -> str:
    return os.environ.get("SFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sft"))


def _special(arch: str) -> dict:
    return {"pad_token": "<pad>", "eos_token": path_of(arch).eos_token, "unk_token": "<unk>"}


GROUPS = 32  # the grouping looks this many groups ahead, so a run costs linear time (unbounded: quadratic)


def digit_splitter(digits: int):
    """The pre-tokenizer that cuts numbers: every numeric character alone, or runs of decimal digits (`\\d`, any
    script) in right-aligned groups of up to `digits`. A fraction's digits are grouped from the right like any
    run; in a run longer than GROUPS + 1 groups, the digits before the last GROUPS + 1 groups stay one piece
    for BPE to split."""
    from tokenizers import Regex, pre_tokenizers

    if digits == 1:
        return pre_tokenizers.Digits(individual_digits=True)
    pattern = rf"\d{{1,{digits}}}(?=(?:\d{{{digits}}}){{0,{GROUPS}}}(?!\d))"
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


# characters: an unbroken run longer than this reaches the BPE trainer in pieces of this size. Long enough that
# real text is untouched (a Chinese paragraph has no spaces: at 64, 755 runs of the pre-training corpus were cut
# and the tokenizer, and so the committed cpu-suite table, changed); a random 1 MB token trains in about 1 s.
LONG_WORD = 1000
_LONG_WORD = re.compile(r"\S{%d,}" % (LONG_WORD + 1))


def _break_long_words(text: str) -> str:
    """The BPE trainer's time grows with the square of a word's length (a 1 MB token without a space took
    minutes); a word past LONG_WORD characters is learnt from as pieces. Ordinary text is unchanged."""
    if len(text) <= LONG_WORD:
        return text
    return _LONG_WORD.sub(lambda m: " ".join(m[0][i:i + LONG_WORD] for i in range(0, len(m[0]), LONG_WORD)), text)


def build_tokenizer(kind: str, texts: list[str], *, vocab_size: int, arch: str, markers: tuple[str, ...] = (),
                    digits: int = 1):
    """Train (or load from cache) a byte-level BPE on `texts`; kind 'byte' keeps only the 256 bytes.

    `markers` are the template's control strings (e.g. ChatML's <|im_start|>, <|im_end|>): they become single
    special tokens, as in a real chat model's tokenizer, instead of five BPE pieces that merge with the text
    around them (an answer then ends with one token, and the prompt costs a third fewer tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [_break_long_words(t) for t in texts]
    special = _special(arch)
    specials = [special["pad_token"], special["eos_token"], special["unk_token"]]
    specials += [m for m in dict.fromkeys(markers) if m not in specials]
    size = 256 + len(specials) if kind == "byte" else vocab_size
    digest = hashlib.sha256()
    # (digits joins the key only where it is not the default, so tokenizers cached before it stay valid)
    digest.update(json.dumps([kind, size, arch, 4, specials] + ([digits] if digits != 1 else [])).encode())
    for t in texts if kind != "byte" else ():  # the byte vocabulary does not depend on the data
        digest.update(t.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    path = os.path.join(cache_root(), "tokenizers", digest.hexdigest()[:20])
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return load_tokenizer(path)

    tok = Tokenizer(models.BPE(unk_token=special["unk_token"]))
    cjk = Regex("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
    tok.pre_tokenizer = pre_tokenizers.Sequence([digit_splitter(digits),
                                                 pre_tokenizers.Split(cjk, behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if len(specials) > 3:
        fast.add_special_tokens({"additional_special_tokens": specials[3:]})
    if not path_of(arch).encoder_decoder:  # GPT-2's convention: BOS is the EOS token
        fast.bos_token = special["eos_token"]
    tmp = f"{path}.tmp{os.getpid()}"
    fast.save_pretrained(tmp)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race; use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(path)


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        hint = "the Hub is unreachable offline; " if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ModelError(f"cannot load tokenizer {name!r} ({hint}{type(e).__name__}: {str(e).splitlines()[0][:160]})",
                         field="model.tokenizer",
                         fix="point model.tokenizer at a local tokenizer directory, or use 'bpe' to build one") from e
    if tok.pad_token is None:  # GPT-2 has no pad token; reuse EOS (labels mask padding anyway)
        tok.pad_token = tok.eos_token
    return tok


# ---- the recipe's tokenizer ----------------------------------------------------------------------

def builds_tokenizer(recipe) -> bool:
    """Whether the recipe's tokenizer is built from its training data ('bpe' / 'byte') rather than loaded."""
    return (recipe.model.tokenizer or recipe.model.name) in BUILT


def get_tokenizer(recipe, train_records: list[dict] | None, arch: str):
    """The recipe's tokenizer; 'bpe'/'byte' are built from the rendered training texts (cached)."""
    m = recipe.model
    kind = m.tokenizer or m.name
    if builds_tokenizer(recipe):
        if recipe.data.template == "tokenizer":
            raise ModelError(f"template: tokenizer needs a pretrained tokenizer with a chat template, not a {kind!r} "
                             "tokenizer built from the data", field="data.template",
                             fix="choose a built-in template (alpaca, chatml, plain), or a Hub/local tokenizer")
        if train_records is None:
            raise ModelError("a built tokenizer needs the training data", field="model.tokenizer")
        from .data.templates import get_template, render_training

        tpl = get_template(recipe.data.template)
        # documents are trained as their raw text; T5 trains them by span corruption, which needs sentinels
        from .data.documents import SENTINEL, SENTINELS, document_text

        texts = [document_text(r) if r.get("document") else
                 "".join(t for t, _ in render_training(tpl, r["messages"], recipe.data.system_prompt, r.get("tools")))
                 for r in train_records]
        markers = tuple(getattr(tpl, "markers", ()))
        if path_of(arch).encoder_decoder and any(r.get("document") for r in train_records):
            markers += tuple(SENTINEL.format(i) for i in range(SENTINELS))
        tokenizer = build_tokenizer(kind, texts, vocab_size=m.tokenizer_vocab_size, arch=arch, markers=markers,
                                    digits=m.tokenizer_digits)
    else:
        tokenizer = load_tokenizer(kind, revision=m.revision if kind == m.name else None,
                                   trust_remote_code=m.trust_remote_code)
    if recipe.data.chat_template_path:
        tokenizer.chat_template = read_chat_template(recipe.data.chat_template_path)
    from .data.templates import chat_template_for

    builtin = chat_template_for(recipe.data.template, recipe.data.system_prompt)
    if builtin is not None:  # saved with the model: servers then prompt it exactly as sft trained it
        tokenizer.chat_template = builtin
    return tokenizer


def read_chat_template(path: str) -> str:
    from .errors import RecipeError

    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the chat template ({type(e).__name__})", file=path,
                          field="data.chat_template_path", fix="point it at a UTF-8 .jinja file") from e
    if "{{" not in text and "{%" not in text:
        raise RecipeError("this file is not a Jinja chat template", file=path, field="data.chat_template_path",
                          fix="point it at a .jinja chat template")
    return text
