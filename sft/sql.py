"""SQL scored by execution: a predicted query and its reference run on the same SQLite database and their results
are compared, so `SELECT name FROM t WHERE a = 1` and `select name from t where a=1` count as the same answer.

Safety: the database is opened read-only (`mode=ro`), an authorizer allows reading only (no writes, no ATTACH, no
PRAGMA), one statement per query, and a progress handler stops any query past its time limit. Results compare
as multisets of rows, or as ordered lists when the reference has ORDER BY. Python's standard `sqlite3` only.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections import Counter

from .errors import EvalError

TIME_LIMIT_S = 2.0
MAX_ROWS = 100_000
MEMO = 10_000  # results kept per connection: the corpus, per-item and per-task scores run the same queries
BUILTIN = "builtin:synthetic"  # the synthetic text_to_sql family's own database
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


class QueryError(Exception):
    """A query that does not run here (syntax, unknown table, not read-only, too slow, too large)."""


def _authorize(action, *_):
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY


def check_database(spec: str | None, *, field: str = "eval.sql_database", file: str | None = None) -> str:
    """`spec` when it names a SQLite file that exists, or builtin:synthetic (built when first scored:
    `score.database_path`); else a one-line error."""
    if not spec:
        how = f"pass {field} PATH.sqlite" if field.startswith("--") else f"set {field}: PATH.sqlite"
        raise EvalError("execution_accuracy needs a SQLite database to run the queries on", file=file, field=field,
                        fix=f"{how} (or builtin:synthetic for the synthetic suite's SQL families)")
    if spec == BUILTIN:
        return spec
    if not os.path.isfile(spec):
        raise EvalError(f"no such database file {spec!r}", file=file, field=field,
                        fix="give the path of a SQLite file (or builtin:synthetic)")
    with open(spec, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise EvalError(f"{spec!r} is not a SQLite database", file=file, field=field,
                            fix="give the path of a SQLite 3 file")
    return spec


class Database:
    """One read-only connection; `run(sql)` returns the result rows or raises QueryError."""

    def __init__(self, path: str, time_limit_s: float = TIME_LIMIT_S):
        self.path, self.time_limit_s = path, time_limit_s
        self.conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, check_same_thread=False)
        self.conn.set_authorizer(_authorize)
        self._deadline = 0.0
        self.conn.set_progress_handler(lambda: int(time.monotonic() > self._deadline), 10_000)
        self._memo: dict[str, list[tuple] | QueryError] = {}

    def run(self, sql: str) -> list[tuple]:
        """The query's rows, or QueryError; each distinct query runs once (the database is read-only)."""
        if sql not in self._memo:
            if len(self._memo) >= MEMO:
                self._memo.clear()
            try:
                self._memo[sql] = self._run(sql)
            except QueryError as e:
                self._memo[sql] = e
        result = self._memo[sql]
        if isinstance(result, QueryError):
            raise result
        return result

    def _run(self, sql: str) -> list[tuple]:
        query = sql.strip().rstrip(";").strip()
        if not query:
            raise QueryError("empty query")
        self._deadline = time.monotonic() + self.time_limit_s
        try:
            cur = self.conn.execute(query)
            rows = cur.fetchmany(MAX_ROWS + 1)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as e:
            raise QueryError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        if len(rows) > MAX_ROWS:
            raise QueryError(f"more than {MAX_ROWS:,} rows")
        return [tuple(r) for r in rows]

    def close(self) -> None:
        self.conn.close()


def same_result(predicted: list[tuple], reference: list[tuple], ordered: bool) -> bool:
    return predicted == reference if ordered else Counter(predicted) == Counter(reference)


def execution_scores(db: Database, prediction: str, references: list[str]) -> dict:
    """{execution_accuracy, execution_invalid} for one item, or {} when no reference runs (the item is not SQL,
    e.g. another task of a mixed eval set): best over the references that run."""
    results = []
    for ref in references:
        try:
            results.append((db.run(ref), bool(_ORDER_BY.search(ref))))
        except QueryError:
            continue
    if not results:
        return {}
    try:
        got = db.run(prediction)
    except QueryError:
        return {"execution_accuracy": 0.0, "execution_invalid": 1.0}
    return {"execution_accuracy": float(any(same_result(got, want, ordered) for want, ordered in results)),
            "execution_invalid": 0.0}
