"""Perplexity over answer tokens only: exp(total NLL / number of answer tokens), batched.

Causal features carry -100 labels on prompt tokens; seq2seq labels are the target alone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..families import path_of
from .generate import _pad


# Bytes of logits one forward may hold. Rows of a batch run in sub-batches below this, and the fp32
# cross-entropy runs over chunks of positions, so [batch, seq, vocab] fp32 logits never exist at once
# (vocab 150k x seq 2k x batch 32 would be ~40 GB).
LOGITS_BUDGET = 512 * 2**20
CE_CHUNK = 1024  # positions per fp32 cross-entropy chunk


def _rows_per_forward(width: int, vocab: int, itemsize: int, budget: int) -> int:
    return max(1, budget // max(1, width * vocab * itemsize))


def _chunked_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position NLL ([rows, seq]) with fp32 upcasting one chunk of positions at a time."""
    out = torch.zeros(target.shape, dtype=torch.float32, device=logits.device)
    for s in range(0, target.shape[1], CE_CHUNK):
        lg, tg = logits[:, s:s + CE_CHUNK], target[:, s:s + CE_CHUNK]
        out[:, s:s + CE_CHUNK] = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), tg.reshape(-1),
                                                 ignore_index=-100, reduction="none").view(tg.shape)
    return out


@torch.no_grad()
def token_nll(model, features: list[dict], *, arch: str, pad_id: int, batch_size: int,
              logits_budget: int = LOGITS_BUDGET) -> list[tuple[float, int]]:
    """(summed NLL, answer-token count) per feature."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    itemsize = dtype.itemsize if dtype.is_floating_point else 2  # 4-bit weights compute in 16 bits or more
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
    results: list[tuple[float, int]] = [(0.0, 0)] * len(features)
    path = path_of(arch)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        width = max(path.scored_width(features[i]) for i in idx)
        step = _rows_per_forward(width, vocab, itemsize, logits_budget)
        for c in range(0, len(idx), step):
            sub = idx[c: c + step]
            ids, mask = _pad([features[i]["input_ids"] for i in sub], pad_id, left=False)
            labels, _ = _pad([features[i]["labels"] for i in sub], -100, left=False)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits, target = path.logits_and_targets(model, ids, mask, labels)
            nll = _chunked_nll(logits, target)
            del logits
            counts = (target != -100).sum(dim=1)
            for j, i in enumerate(sub):
                results[i] = (float(nll[j].sum()), int(counts[j]))
    return results


def perplexity(nlls: list[tuple[float, int]]) -> float:
    total = sum(n for n, _ in nlls)
    count = sum(c for _, c in nlls)
    return math.exp(total / count) if count else float("nan")
