"""Trainable LoRA parameters of GPT-2 Medium and Large with r=4 on the query and value projections,
from configs alone (no weights: the models are built on the meta device), beside the LoRA paper's
Table 3 (0.35M and 0.77M).   python benchmarks/lora-paper-params/count.py"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from sft.modeling import load_config  # noqa: E402
from sft.recipe import ModelConfig  # noqa: E402

PAPER = {"gpt2-medium": 0.35e6, "gpt2-large": 0.77e6}

print("| model | d_model | layers | peft LoRA r=4 on c_attn (q,k,v fused) | formula Wq+Wv: 2 x 2 x d x r x layers "
      "| LoRA paper Table 3 |")
print("|---|---|---|---|---|---|")
for name, paper in PAPER.items():
    config = load_config(ModelConfig(name=name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["c_attn"],
                                                  fan_in_fan_out=True, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    d, layers = config.n_embd, config.n_layer
    formula = 2 * 2 * d * 4 * layers
    print(f"| {name} | {d} | {layers} | {trainable:,} ({trainable / 1e6:.2f}M) | {formula:,} ({formula / 1e6:.2f}M) "
          f"| {paper / 1e6:.2f}M |")
