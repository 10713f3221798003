"""The record store: canonical records as JSON strings in an Arrow file (or memory), read back by position, so a
corpus bigger than memory is split and mixed as positions."""

from __future__ import annotations

import json
import os

from .clean import prompt_key
from .split import prompt_digest, split_by_hash


class RecordReader:
    """Reads a `RecordStore`'s JSON strings at sorted positions, one record batch at a time. The file is read
    with plain reads, not memory-mapped: mapped pages stay in the process's RSS once touched, and the
    tokenising stage touches every record. Picklable for num_proc workers (each opens the file itself)."""

    def __init__(self, path: str | None, starts: list[int], batches: list | None = None):
        import numpy as np

        self.path, self.starts, self.batches = path, np.asarray(starts, dtype=np.int64), batches
        self._reader = None
        self._cached: tuple = (None, None)

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_cached": (None, None)}

    def _column(self, b: int):
        if self._cached[0] != b:  # the map asks for consecutive positions: one batch serves many calls
            if self.batches is not None:
                column = self.batches[b].column(0)
            else:
                if self._reader is None:
                    import pyarrow as pa

                    self._reader = pa.ipc.open_file(pa.OSFile(self.path))
                column = self._reader.get_batch(b).column(0)
            self._cached = (b, column)
        return self._cached[1]

    def read(self, positions) -> list[str]:
        """The JSON strings at `positions` (ascending), in that order."""
        import numpy as np
        import pyarrow as pa

        pos = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.starts, pos, side="right") - 1
        out: list[str] = []
        for b in np.unique(which).tolist():
            out.extend(self._column(b).take(pa.array(pos[which == b] - self.starts[b])).to_pylist())
        return out


class RecordStore:
    """Every cleaned example as one JSON string, appended a piece at a time: to an Arrow file in `workdir`
    (read back a record batch at a time, see RecordReader) or to memory. Beside each, what splitting and
    mixing work on: its source and its prompt's digest. So a million examples are never a million Python dicts
    at once, nor a million records' pages in RSS."""

    def __init__(self, seed: int, workdir: str | None = None):
        from array import array

        self.seed = seed
        self.names: list[str] = []  # source names; `source[i]` is a position in it
        self._source, self._hash, self._tie = array("H"), array("Q"), array("Q")
        self._path = os.path.join(workdir, "records.arrow") if workdir else None
        self._batches: list = []
        self._starts: list[int] = []  # each record batch's first position
        self._sink = self._writer = self._reader = self._arrays = None

    def __len__(self) -> int:
        return len(self._source)

    def add(self, records: list[dict], name: str) -> None:
        import pyarrow as pa

        if self._reader is not None:
            raise RuntimeError("RecordStore.add after reader(): the records are already read")
        if name not in self.names:
            self.names.append(name)
        if not records:
            return
        self._starts.append(len(self))
        self._source.extend([self.names.index(name)] * len(records))
        for r in records:
            h, t = prompt_digest(prompt_key(r), self.seed)
            self._hash.append(h)
            self._tie.append(t)
        # ASCII JSON: a lone surrogate (valid in a JSON string) survives the UTF-8 Arrow column
        batch = pa.record_batch([pa.array([json.dumps(r) for r in records], pa.string())],
                                schema=self.schema())
        if self._path is None:
            self._batches.append(batch)
            return
        self._open_file().write_batch(batch)

    @staticmethod
    def schema():
        import pyarrow as pa

        return pa.schema([("record", pa.string())])

    def _open_file(self):
        import pyarrow as pa

        if self._writer is None:
            self._sink = pa.OSFile(self._path, "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema())  # the file format: batches by index
        return self._writer

    def arrays(self):
        """(source, hash, tie) per example, as numpy arrays."""
        import numpy as np

        if self._arrays is None or len(self._arrays[0]) != len(self):
            # copies: a view would pin the growable arrays' buffers
            self._arrays = tuple(np.frombuffer(a, dtype=t).copy() for a, t in
                                 ((self._source, np.uint16), (self._hash, np.uint64), (self._tie, np.uint64)))
        return self._arrays

    def reader(self) -> RecordReader:
        """A reader of the records; no more can be added."""
        if self._reader is None:
            if self._path is None:
                self._reader = RecordReader(None, self._starts, self._batches)
            else:
                self._open_file().close()
                self._sink.close()
                self._reader = RecordReader(self._path, self._starts)
        return self._reader

    def records(self, positions: list[int]) -> list[dict]:
        """The examples at `positions`, in that order; a position repeated is the same object each time."""
        unique = sorted(set(positions))
        loaded = dict(zip(unique, map(json.loads, self.reader().read(unique))))
        return [loaded[i] for i in positions]

    def source_name(self, position: int) -> str:
        return self.names[self._source[position]]

    def split(self, positions: range, sizes: list[int]) -> list[list[int]]:
        _, hashes, ties = self.arrays()
        return split_by_hash(positions, hashes, ties, sizes)

    def prompts_in(self, positions: list[int], among: list[int]) -> list[bool]:
        """For each of `among`: does its prompt equal that of one of `positions`?"""
        import numpy as np

        _, hashes, ties = self.arrays()
        held = set(zip(hashes[positions].tolist(), ties[positions].tolist()))
        among = np.asarray(among, dtype=np.int64)
        maybe = np.isin(hashes[among], np.fromiter((h for h, _ in held), dtype=np.uint64, count=len(held)))
        return [bool(m) and (int(hashes[i]), int(ties[i])) in held for m, i in zip(maybe.tolist(), among.tolist())]
