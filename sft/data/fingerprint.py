"""Fingerprints of a run's data: what each source's content is (file hashes, a builtin's parameters, a Hub id),
the template and tokenizer digests, and the held-out ids. The tokenised cache is keyed by them and a run folder
records them (`rundir.FINGERPRINT`), so a resumed run or an evaluation can tell the data changed."""

from __future__ import annotations

import hashlib
import json
import os

def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


SAMPLED_OVER = 1 << 30  # a streamed data file this large is fingerprinted by samples of its content


def data_file_digest(path: str) -> str:
    """A streamed data file's content hash. Beyond SAMPLED_OVER bytes (a 100 GB shard set would take minutes at
    every start), its size, first and last MiB and 64 evenly spaced 64 KiB blocks stand for it: a rewrite that
    changes the size or a sampled block is seen, and copying the file keeps the digest. (Prepared sources are
    hashed in full: their hash keys the tokenised cache, which must never serve stale data.)"""
    size = os.path.getsize(path)
    if size <= SAMPLED_OVER:
        return file_digest(path)
    h = hashlib.sha256(f"sampled {size}".encode())
    with open(path, "rb") as fh:
        for offset in [0, size - (1 << 20)] + [size * i // 65 for i in range(1, 65)]:
            fh.seek(offset)
            h.update(fh.read(1 << 20 if offset in (0, size - (1 << 20)) else 1 << 16))
    return "s" + h.hexdigest()[:19]


def source_fingerprint(src, *, streaming: bool = False) -> dict:
    """What a source's content is: each local file's hash (every data file its reader would read); a builtin's
    parameters; a Hub id and revision."""
    from .sources import local_files

    if src.path.startswith("builtin:"):
        return {"path": src.path, "builtin": {"num_examples": src.num_examples, "tasks": list(src.tasks),
                                              "split": src.split}}
    files = local_files(src.path, None, streaming=streaming)
    if files is None:
        return {"path": src.path, "hub": {"split": src.split, "subset": src.subset}}
    files = [f for f in files if os.path.isfile(f)]
    names = [os.path.basename(f) for f in files]
    if len(set(names)) < len(names):  # same names in different folders: name them from their common folder
        names = [os.path.relpath(f, os.path.commonpath(files)) for f in files]
    digest = data_file_digest if streaming else file_digest
    return {"path": src.path, "files": {n: digest(f) for n, f in zip(names, files)}}


def sources_fingerprint(d) -> dict:
    """The fingerprints of a data section's training and eval sources (training sources as their reader reads
    them: streamed or prepared)."""
    return {"sources": [source_fingerprint(s, streaming=d.streaming) for s in d.sources],
            "eval_sources": [source_fingerprint(s) for s in d.eval_sources]}


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    chat = getattr(tokenizer, "chat_template", None)  # template: tokenizer renders with it
    blob = json.dumps([vocab, chat if isinstance(chat, str) else None], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def template_digest(spec: str) -> str:
    text = spec
    if spec.endswith((".jinja", ".j2")) and os.path.isfile(spec):
        with open(spec, "rb") as fh:
            text = spec + "\x00" + fh.read().decode("utf-8", "replace")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def data_fingerprint(recipe, tokenizer, splits) -> dict:
    from .split import record_id

    d = recipe.data
    return {**sources_fingerprint(d), "template": template_digest(d.template),
            "tokenizer": tokenizer_digest(tokenizer), "eval_ids": [record_id(r) for r in splits.eval],
            "test_ids": [record_id(r) for r in splits.test]}


def data_changes(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two fingerprints (ignoring the split ids)."""
    changes = []
    for key in ("sources", "eval_sources"):
        for old, new in zip(saved.get(key, []), now.get(key, [])):
            if old != new:
                files = [f for f in set(old.get("files", {})) | set(new.get("files", {}))
                         if old.get("files", {}).get(f) != new.get("files", {}).get(f)]
                changes.append(f"{new['path']}" + (f" ({', '.join(sorted(files))} changed)" if files else " changed"))
        if len(saved.get(key, [])) != len(now.get(key, [])):
            changes.append(f"the number of data.{key} changed")
    if saved.get("template") != now.get("template"):
        changes.append("the template changed")
    if saved.get("tokenizer") != now.get("tokenizer"):
        changes.append("the tokenizer changed")
    return changes
