"""Read raw rows from a source: a Hub dataset id, local files/globs, a build-data directory, or builtin:.

Local files are read by this module (not `datasets`) so that a bad file gets an error naming the
file, the line and the fix, instead of an Arrow traceback.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator

from ..errors import DataError
from . import synthetic

LOCAL_EXTS = (".json", ".jsonl", ".csv", ".parquet")
# what data.streaming reads, and the `datasets` builder that reads each type
STREAM_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                   ".csv": "csv"}
STREAM_EXTS = tuple(STREAM_BUILDERS)
ALL_EXTS = tuple(dict.fromkeys(LOCAL_EXTS + STREAM_EXTS))
CHUNK = 10_000  # rows per piece when a source is read a piece at a time


def source_name(path: str) -> str:
    if path.startswith("builtin:"):
        return path.split(":", 1)[1] or "synthetic"
    parts = path.rstrip("/").split("/")
    # a glob (shards/*.parquet) is named by the folder its pattern sits in
    while len(parts) > 1 and any(c in parts[-1] for c in "*?["):
        parts.pop()
    base = parts[-1]
    if base.endswith(".gz"):
        base = base[:-3]
    for ext in LOCAL_EXTS:
        if base.endswith(ext):
            return base[: -len(ext)]
    return base or path


def _read_text(path: str, field: str) -> str:
    """The whole file as text; a UTF-8 byte-order mark is accepted and dropped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.read()
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})", file=path,
                        field=field, fix="re-encode the file as UTF-8, e.g. iconv -t UTF-8") from e
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", file=path, field=field) from e


def _read_jsonl(path: str, field: str, text: str | None = None) -> list[dict]:
    text = _read_text(path, field) if text is None else text
    if text.lstrip().startswith("["):  # a JSON array saved as .jsonl: read it as the JSON it is
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            data = None
        if isinstance(data, list):
            return _rows_of(data, path, field)
    rows = []
    # JSON lines are separated by \n only (\r\n tolerated): U+2028, U+0085 or \x0c inside a string are text.
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            raise DataError(f"line {lineno}: JSON nested too deeply to read", file=path, field=field,
                            fix="flatten that line") from None
        except json.JSONDecodeError as e:
            raise DataError(f"line {lineno}: invalid JSON ({e.msg} at column {e.colno})", file=path, field=field,
                            fix="repair or delete that line (is the file truncated?)") from e
        if not isinstance(row, dict):
            raise DataError(f"line {lineno}: expected a JSON object, got {type(row).__name__}", file=path,
                            field=field, fix="write one JSON object per line")
        rows.append(row)
    return rows


def _rows_of(data: list, path: str, field: str) -> list[dict]:
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise DataError(f"item {i} of the JSON list is a {type(r).__name__}, expected an object", file=path,
                            field=field, fix="make every item an object such as {\"instruction\": ..., ...}")
    return data


def _read_json(path: str, field: str) -> list[dict]:
    text = _read_text(path, field)
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError("JSON nested too deeply to read", file=path, field=field, fix="flatten the data") from None
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):  # JSON lines saved as .json
            return _read_jsonl(path, field, text)
        raise DataError(f"invalid JSON at line {e.lineno}, column {e.colno} ({e.msg})", file=path, field=field,
                        fix="repair the file (is it truncated?)") from e
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of objects (or JSON lines), got a {type(data).__name__}", file=path,
                        field=field, fix="store the rows as a list: [{...}, {...}]")
    return _rows_of(data, path, field)


def _read_csv(path: str, field: str) -> list[dict]:
    """RFC 4180 through the csv module: quoted fields keep their newlines, commas and any other character."""
    import io

    reader = csv.DictReader(io.StringIO(_read_text(path, field), newline=""), restkey=_EXTRA)
    try:
        if not reader.fieldnames:
            raise DataError("CSV file has no header row", file=path, field=field,
                            fix="add a header naming the columns")
        _check_header(reader.fieldnames, path, field)
        rows = []
        for r in reader:
            if _EXTRA in r:
                raise DataError(f"line {reader.line_num}: {len(reader.fieldnames) + len(r[_EXTRA])} fields for "
                                f"{len(reader.fieldnames)} header columns", file=path, field=field,
                                fix='quote fields that contain commas, e.g. "a, b"')
            rows.append(dict(r))
    except csv.Error as e:
        raise DataError(f"line {reader.line_num}: malformed CSV ({e})", file=path, field=field,
                        fix="check the quoting on that line") from e
    return rows


_EXTRA = "\x00extra"


def _check_header(names: list[str], path: str, field: str) -> None:
    """Two columns of one name would silently keep only the last (csv) or be renamed (pandas)."""
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DataError(f"CSV header names column(s) {dup} more than once", file=path, field=field,
                        fix="give every column its own name")


def check_csv_header(path: str, field: str) -> None:
    """The header of a CSV file read by the streaming reader (which reads the rows itself)."""
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError):
        return  # the reader reports unreadable files itself
    if header:
        _check_header(header, path, field)


def _parquet_chunks(path: str, field: str, size: int = CHUNK) -> Iterator[list[dict]]:
    """Row groups in batches of `size` rows: a large shard is never in memory whole."""
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            yield batch.to_pylist()
    except Exception as e:  # pyarrow raises several types for bad files
        raise DataError(f"cannot read parquet ({e})", file=path, field=field) from e


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}  # whole files; Parquet by row batches


def _local_chunks(path: str, field: str) -> Iterator[list[dict]]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in LOCAL_EXTS:
        raise DataError(f"unsupported file type {ext!r}", file=path, field=field,
                        fix=f"use one of {', '.join(LOCAL_EXTS)}")
    if ext == ".parquet":
        yield from _parquet_chunks(path, field)
    else:
        yield _READERS[ext](path, field)


def is_local_path(path: str) -> bool:
    """A file, glob or directory (rather than a Hub dataset id)."""
    return (path.startswith((".", "/", "~")) or os.path.splitext(path)[1].lower() in LOCAL_EXTS
            or any(c in path for c in "*?[") or os.path.exists(path))


def file_ext(path: str, exts=ALL_EXTS) -> str:
    """The file's type: the longest of `exts` its name ends with (.jsonl.gz), else its last extension."""
    low = path.lower()
    return next((e for e in sorted(exts, key=len, reverse=True) if low.endswith(e)), os.path.splitext(low)[1])


def local_files(path: str, split: str | None = "train", *, streaming: bool = False) -> list[str] | None:
    """The files a local source names, sorted, as its reader reads them; None for builtin: and Hub ids. The one
    resolver for reading, streaming and fingerprinting a source.
      prepared (default): a file; a glob; a `sft build-data` folder's {split}.jsonl (split None: every data
        file of the folder); else the folder's .json/.jsonl/.csv/.parquet files
      streaming: the same, but a folder reaches into subfolders, .gz files count, and a folder's files are all
        streamed (no build-data rule)
    A glob's `**` matches any number of folders in both."""
    if path.startswith("builtin:"):
        return None
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        files = _build_data_dir_files(expanded, split) if split is not None and not streaming else []
        pattern = os.path.join(expanded, "**", "*") if streaming else os.path.join(expanded, "*")
        exts = STREAM_EXTS if streaming else LOCAL_EXTS
        return files or sorted(f for f in glob.glob(pattern, recursive=streaming) if file_ext(f) in exts)
    if is_local_path(path):
        # one glob rule for prepared and streamed sources: `**` matches any number of folders
        return sorted(glob.glob(expanded, recursive=True)) if any(c in path for c in "*?[") else [expanded]
    return None


def _build_data_dir_files(path: str, split: str) -> list[str]:
    """A `sft build-data` output directory: pick the split's jsonl."""
    cand = os.path.join(path, f"{split}.jsonl")
    return [cand] if os.path.exists(cand) else []


def read_rows(path: str, *, split: str = "train", subset: str | None = None, field: str = "data.sources",
              num_examples: int = 2000, tasks: list[str] | None = None, seed: int = 0) -> list[dict]:
    """Raw rows (dicts) from one source."""
    return [r for chunk in iter_rows(path, split=split, subset=subset, field=field, num_examples=num_examples,
                                     tasks=tasks, seed=seed) for r in chunk]


def iter_rows(path: str, *, split: str = "train", subset: str | None = None, field: str = "data.sources",
              num_examples: int = 2000, tasks: list[str] | None = None, seed: int = 0,
              chunk: int | None = None) -> Iterator[list[dict]]:
    """Raw rows from one source in lists of `chunk` (the last may be shorter): Parquet and Hub data are read a
    batch at a time, so a source larger than memory passes through in pieces."""
    return _rebatch(_chunks(path, split=split, subset=subset, field=field, num_examples=num_examples, tasks=tasks,
                            seed=seed), chunk or CHUNK)


def _rebatch(chunks: Iterator[list[dict]], size: int) -> Iterator[list[dict]]:
    """Even lists of `size` rows, whatever the files' sizes (format detection reads the first rows); each row is
    copied at most once."""
    buf: list[dict] = []
    for c in chunks:
        i = 0
        if buf:  # top up the rows left over from the previous list
            i = min(size - len(buf), len(c))
            buf.extend(c[:i])
            if len(buf) < size:
                continue
            yield buf
        while len(c) - i >= size:
            yield c[i:i + size]
            i += size
        buf = c[i:]
    if buf:
        yield buf


def _chunks(path: str, *, split: str, subset: str | None, field: str, num_examples: int,
            tasks: list[str] | None, seed: int) -> Iterator[list[dict]]:
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in ("synthetic", ""):
            raise DataError(f"unknown builtin source {path!r}", field=field, fix="use builtin:synthetic")
        # Each split is generated from its own seed, so a named split is a fresh draw.
        split_seed = seed + {"train": 0, "validation": 1, "eval": 1, "test": 2}.get(split, 3)
        yield synthetic.generate(num_examples, seed=split_seed, tasks=tasks or None)
        return

    files = local_files(path, split)
    if files is None:
        yield from _hub_chunks(path, split=split, subset=subset, field=field)
        return
    if os.path.isdir(os.path.expanduser(path)) and not files:
        raise DataError(f"directory has no {split}.jsonl or data files", file=path, field=field)
    if not files or not os.path.exists(files[0]):
        raise DataError("dataset file not found", file=path, field=field,
                        fix="check the path (relative paths are resolved from the current directory)")
    for f in files:
        yield from _local_chunks(f, field)


def _read_hub(repo_id: str, *, split: str, subset: str | None, field: str):
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, subset, split=split)
    except Exception as e:  # offline, missing repo, missing split: one clear line
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        reason = "the Hub is unreachable (offline mode)" if offline else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise DataError(f"cannot load Hub dataset {repo_id!r} split {split!r}: {reason}", field=field,
                        fix="check the id and your connection, or download the data and point path at a local file"
                        ) from e
    return ds


def _hub_chunks(repo_id: str, *, split: str, subset: str | None, field: str) -> Iterator[list[dict]]:
    ds = _read_hub(repo_id, split=split, subset=subset, field=field)  # memory-mapped: read a batch at a time
    for batch in ds.with_format("arrow").iter(batch_size=CHUNK):  # raw rows, as to_list gives them (no decoding)
        yield batch.to_pylist()
