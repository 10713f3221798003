"""SQL by execution: equivalent queries score alike, the database is only read, bad queries are counted, and the
synthetic SQL families ship the database their questions are about."""

import hashlib
import json
import time

import pytest

from conftest import run_cli, tiny_recipe, write_recipe
from sft.data import synthetic
from sft.metrics import score_texts
from sft.sql import Database, QueryError, execution_scores


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return synthetic.sql_database(str(tmp_path_factory.mktemp("sql")))


def test_equivalent_queries_score_alike_and_others_do_not(db_path):
    db = Database(db_path)
    ref = ["SELECT name FROM employees WHERE salary > 300;"]
    for same in ("select name from employees where salary>300", "SELECT e.name FROM employees AS e WHERE 300 < "
                 "e.salary", "SELECT name FROM employees WHERE salary > 300 ORDER BY name DESC"):
        assert execution_scores(db, same, ref) == {"execution_accuracy": 1.0, "execution_invalid": 0.0}, same
    assert execution_scores(db, "SELECT name FROM employees WHERE salary > 301", ref)["execution_accuracy"] in (0.0, 1.0)
    assert execution_scores(db, "SELECT name, age FROM employees WHERE salary > 300", ref) == {
        "execution_accuracy": 0.0, "execution_invalid": 0.0}
    # ORDER BY in the reference: the order counts
    ordered = ["SELECT name FROM employees WHERE age > 30 ORDER BY salary DESC, id;"]
    assert execution_scores(db, "select name from employees where age>30 order by salary desc, id", ordered)[
        "execution_accuracy"] == 1.0
    assert execution_scores(db, "SELECT name FROM employees WHERE age > 30 ORDER BY salary, id", ordered)[
        "execution_accuracy"] == 0.0
    # a multiset, not a set: duplicated rows count
    assert execution_scores(db, "SELECT 1 UNION ALL SELECT 1", ["SELECT 1"])["execution_accuracy"] == 0.0


@pytest.mark.parametrize("bad", ["DROP TABLE employees", "DELETE FROM employees", "INSERT INTO departments VALUES "
                                 "(99, 'x', 1)", "UPDATE employees SET salary = 0", "ATTACH DATABASE ':memory:' AS m",
                                 "PRAGMA writable_schema = 1", "SELECT 1; DROP TABLE employees", "SELEC name",
                                 "SELECT nope FROM employees", "", "CREATE TABLE t (x)"])
def test_anything_but_reading_is_an_invalid_prediction_and_changes_nothing(db_path, bad):
    before = hashlib.sha256(open(db_path, "rb").read()).hexdigest()
    db = Database(db_path)
    assert execution_scores(db, bad, ["SELECT COUNT(*) FROM employees"]) == {"execution_accuracy": 0.0,
                                                                             "execution_invalid": 1.0}
    db.close()
    assert hashlib.sha256(open(db_path, "rb").read()).hexdigest() == before


def test_a_query_that_never_ends_is_stopped_at_the_time_limit(db_path):
    db = Database(db_path, time_limit_s=0.5)
    start = time.monotonic()
    with pytest.raises(QueryError):
        db.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c")
    assert time.monotonic() - start < 5
    assert db.run("SELECT COUNT(*) FROM departments") == [(6,)]  # the connection still works


def test_items_that_are_not_sql_are_left_out(db_path):
    preds = ["SELECT COUNT(*) FROM employees", "5", "SELECT name FROM nowhere"]
    refs = ["SELECT COUNT(*) FROM employees;", "5", "SELECT name FROM departments;"]
    corpus, per = score_texts(preds, refs, ["execution_accuracy", "exact_match"],
                              options={"sql_database": db_path})
    assert per[1] == {"exact_match": 1.0}  # an addition answer: no SQL reference, no execution score
    assert corpus["execution_accuracy"] == 0.5 and corpus["execution_invalid"] == 0.5


def test_the_synthetic_sql_families_run_on_their_database(db_path):
    db = Database(db_path)
    for task in ("text_to_sql", "text_to_sql_hard", "text_to_sql_zh"):
        rows = synthetic.generate(300, seed=3, tasks=[task])
        results = [db.run(r["output"]) for r in rows]  # every reference runs
        assert sum(bool(x) for x in results) > 0.7 * len(rows), task  # and most return rows
    zh = synthetic.generate(200, seed=0, tasks=["text_to_sql_zh"])
    assert all("问题：" in r["input"] for r in zh) and any("JOIN" in r["output"] and "AND" in r["output"] for r in zh)
    hard = synthetic.generate(200, seed=0, tasks=["text_to_sql_hard"])
    assert any("JOIN" in r["output"] and "WHERE" in r["output"] for r in hard)
    # without tasks:, the suite is the seven families it always was (the quickstart's data is unchanged)
    assert {r["task"] for r in synthetic.generate(70)} == set(synthetic.DEFAULT_TASKS)
    assert len(synthetic.DEFAULT_TASKS) == 7 and "text_to_sql_zh" not in synthetic.DEFAULT_TASKS


def test_sft_score_runs_outside_predictions(tmp_path, db_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prediction": "select count(*) from employees", "reference": "SELECT COUNT(*) FROM employees;"},
            {"prediction": "SELECT name FROM employees", "reference": "SELECT name FROM departments;"},
            {"prediction": "DROP TABLE employees", "reference": "SELECT id FROM orders;"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("score", str(path), "--metrics", "execution_accuracy,exact_match", "--sql-database", db_path,
                  "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert m["execution_accuracy"] == pytest.approx(1 / 3) and m["execution_invalid"] == pytest.approx(1 / 3)
    assert m["exact_match"] == 0.0
    res = run_cli("score", str(path), "--metrics", "execution_accuracy")
    assert res.returncode == 2 and "--sql-database: execution_accuracy needs a SQLite database" in res.stderr
    res = run_cli("score", str(path), "--metrics", "execution_accuracy", "--sql-database", str(path))
    assert res.returncode == 2 and "is not a SQLite database" in res.stderr


def test_a_recipe_scores_sql_by_execution(tmp_path):
    r = tiny_recipe("gpt2", tmp_path / "out", steps=20, n=300)
    r["data"]["sources"][0]["tasks"] = ["text_to_sql", "addition"]
    r["eval"].update(after=True, metrics=["exact_match", "execution_accuracy"], sql_database="builtin:synthetic",
                     generation={"max_new_tokens": 40})
    res = run_cli("train", write_recipe(tmp_path / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "execution_accuracy" in m["metrics"] and "execution_accuracy" in m["per_task"]["text_to_sql"]
    assert "execution_accuracy" not in m["per_task"]["addition"]  # not SQL: left out, not scored 0
    r["eval"]["sql_database"] = None
    res = run_cli("train", write_recipe(tmp_path / "r2.yaml", r))
    assert res.returncode == 2 and "eval.sql_database: execution_accuracy needs a SQLite database" in res.stderr


def test_the_invalid_rate_reads_lower_is_better():
    from sft.metrics import higher_is_better

    assert higher_is_better("execution_accuracy") and not higher_is_better("execution_invalid")
