"""Perplexity over answer tokens only: exp(total NLL / number of answer tokens), batched.

Causal features carry -100 labels on prompt tokens; seq2seq labels are the target alone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .generate import _pad


@torch.no_grad()
def token_nll(model, features: list[dict], *, arch: str, pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed NLL, answer-token count) per feature."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(features)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]), reverse=True)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        ids, mask = _pad([features[i]["input_ids"] for i in idx], pad_id, left=False)
        labels, _ = _pad([features[i]["labels"] for i in idx], -100, left=False)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        if arch == "seq2seq":
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            target = labels
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                              ignore_index=-100, reduction="none").view(target.shape)
        counts = (target != -100).sum(dim=1)
        for j, i in enumerate(idx):
            results[i] = (float(nll[j].sum()), int(counts[j]))
    return results


def perplexity(nlls: list[tuple[float, int]]) -> float:
    total = sum(n for n, _ in nlls)
    count = sum(c for _, c in nlls)
    return math.exp(total / count) if count else float("nan")
