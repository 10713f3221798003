"""sft bench: a tiny matrix writes the table and plots; a rerun passes --check (CPU runs are
deterministic); a reference with a changed cell fails, naming the run, column and values."""

import os

from conftest import run_cli, tiny_recipe, write_recipe


def test_bench_table_plots_and_check(tmp_path):
    r = tiny_recipe("gpt2", tmp_path / "unused", steps=8)
    r["eval"] = {"before": False, "after": True, "max_samples": 6, "generation": {"max_new_tokens": 6}}
    write_recipe(tmp_path / "tiny.yaml", r)
    (tmp_path / "bench.yaml").write_text(
        "name: tiny\nrecipes: {gpt2: tiny.yaml}\nmethods: {full: [], lora: [lora.enabled=true]}\n"
        "overrides: [train.report_to=none]\n")
    out = tmp_path / "out"
    res = run_cli("bench", str(tmp_path / "bench.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert "| gpt2-full | gpt2 | full |" in table and "| gpt2-lora | gpt2 | lora |" in table
    for png in ("loss_curves.png", "metrics.png"):
        assert (out / png).stat().st_size > 10000
    assert "<table" in (out / "report.html").read_text()
    ref = tmp_path / "reference.md"
    ref.write_text(table)
    res = run_cli("bench", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "again"), "--check", str(ref))
    assert res.returncode == 0 and "check passed" in res.stdout, res.stderr[-3000:]
    lines = table.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith("| gpt2-lora"))
    cells = lines[i].split("|")
    cells[8] = " 1.0000 "  # perplexity column
    lines[i] = "|".join(cells)
    ref.write_text("\n".join(lines))
    res = run_cli("bench", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "third"), "--check", str(ref))
    assert res.returncode == 1
    assert "gpt2-lora: Perplexity" in res.stderr and "vs reference 1.0" in res.stderr and "±2% relative" in res.stderr
