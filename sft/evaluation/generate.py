"""Batched generation: left padding for causal models, stop at EOS (and the template's stop markers),
decode only the new tokens. Prompts are sorted by length so batches carry little padding."""

from __future__ import annotations

import torch

from ..data.templates import stop_token_ids
from ..families import path_of


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask


def fit_prompt(ids: list[int], budget: int | None, arch: str, eos: int | None) -> list[int]:
    """Keep the last `budget` tokens of a prompt (its end is what the answer follows); a seq2seq source keeps
    its closing EOS."""
    if budget is None or len(ids) <= budget:
        return ids
    return ids[len(ids) - budget:]


def cut_at_stop(text: str, stops: tuple[str, ...], strip: bool = True) -> str:
    """The answer before the first stop marker; `strip=False` keeps a raw continuation's whitespace."""
    for s in stops:
        idx = text.find(s)
        if idx >= 0:
            text = text[:idx]
    return text.strip() if strip else text


def generation_kwargs(gen, num_return_sequences: int = 1) -> dict:
    """`generate` arguments for a GenerationConfig: every sampling setting is passed, so the model's own
    generation_config (e.g. transformers' top_k=50) never applies silently."""
    kw = dict(max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams, do_sample=gen.do_sample,
              repetition_penalty=gen.repetition_penalty)
    if gen.do_sample:
        kw.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    if num_return_sequences > 1:
        kw["num_return_sequences"] = num_return_sequences
    return kw


def decode_raw(tokenizer, ids, stop_ids: list[int], stops: tuple[str, ...]) -> str:
    """The answer with its special tokens kept (gpt-oss channels, DeepSeek and Mistral tool-call markers are
    special tokens that `skip_special_tokens` removes): cut at the first stop token, padding dropped."""
    ids = [int(i) for i in ids]
    end = next((k for k, i in enumerate(ids) if i in stop_ids), len(ids))
    drop = {tokenizer.pad_token_id, tokenizer.bos_token_id} - {None}
    return cut_at_stop(tokenizer.decode([i for i in ids[:end] if i not in drop], skip_special_tokens=False), stops)


@torch.no_grad()
def generate_batched(model, tokenizer, prompts: list[list[int]], *, arch: str, gen, batch_size: int,
                     stops: tuple[str, ...] = (), progress: bool = False, synced_gpus: bool = False,
                     num_return_sequences: int = 1, strip: bool = True, keep_raw: bool = False) -> list:
    """Generated answer text for each tokenised prompt, in input order (with num_return_sequences > 1, a list
    of that many texts per prompt). `keep_raw`: each text is a (text, text with special tokens) pair."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    n = num_return_sequences
    out: list = [""] * len(prompts)
    kwargs = generation_kwargs(gen, n)
    eos_ids = stop_token_ids(tokenizer, stops)
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generating", leave=False)
    for idx in batches:
        ids, mask = _pad([prompts[i] for i in idx], tokenizer.pad_token_id, left=path_of(arch).left_pad)
        ids, mask = ids.to(device), mask.to(device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=eos_ids, synced_gpus=synced_gpus, **kwargs)
        new = path_of(arch).new_tokens(seqs, ids.shape[1])
        texts = [cut_at_stop(t, stops, strip) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if keep_raw:
            texts = [(t, decode_raw(tokenizer, row, eos_ids, stops)) for t, row in zip(texts, new.tolist())]
        for k, i in enumerate(idx):
            out[i] = texts[k] if n == 1 else texts[k * n:(k + 1) * n]
    return out
