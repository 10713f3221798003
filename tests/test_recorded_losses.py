"""Recorded losses pin behaviour: the first 10 logged training losses of tiny GPT-2 and T5, full, LoRA and
QLoRA, equal committed values (rtol 1e-4; CPU runs are deterministic). A change to templates, labels,
masking, tokenisation or the trainer setup moves them.

Regenerate after an intended change (and say why in the commit):
    HF_HUB_OFFLINE=1 python tests/test_recorded_losses.py --record
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import FIXTURES, tiny_recipe  # noqa: E402

RECORD = os.path.join(FIXTURES, "recorded_losses.json")
CASES = [f"{arch}-{mode}" for arch in ("gpt2", "t5") for mode in ("full", "lora", "qlora")]


def first_losses(case: str, out: str) -> list[float]:
    from sft.recipe import recipe_from_dict
    from sft.train.run import train

    arch, mode = case.split("-")
    r = tiny_recipe(arch, out, mode=mode, steps=10, n=160)
    r["train"].update(logging_steps=1, report_to=["none"])
    train(recipe_from_dict(r, path=f"{case}.yaml"))
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line)["loss"] for line in fh if '"loss"' in line][:10]


@pytest.mark.parametrize("case", CASES)
def test_first_ten_losses_equal_the_record(tmp_path, case):
    with open(RECORD, encoding="utf-8") as fh:
        expected = json.load(fh)[case]
    got = first_losses(case, str(tmp_path / "out"))
    assert len(got) == 10
    assert got == pytest.approx(expected, rel=1e-4), (
        "losses moved: if the change is intended, regenerate with "
        "`HF_HUB_OFFLINE=1 python tests/test_recorded_losses.py --record`")


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SFT_CACHE", tempfile.mkdtemp())
    record = {}
    for c in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            record[c] = first_losses(c, os.path.join(tmp, "out"))
    with open(RECORD, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")
    print(f"wrote {RECORD}")
