#!/usr/bin/env bash
# The GPU benchmark kit, one command (from anywhere):
#   bash benchmarks/gpu/run.sh           one CUDA GPU: GPT-2 small full/LoRA/QLoRA, packing, Liger, compile,
#                                        plain TRL beside sft -> benchmarks/gpu/results.md
#   bash benchmarks/gpu/run.sh --smoke   the same code on CPU with tiny models (runs in the tests)
# Other options: --only NAME[,NAME] --steps N --batch-size N --max-length N --out DIR --tokenizer DIR --alpaca FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python}" benchmarks/gpu/bench.py "$@"
