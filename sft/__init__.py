"""sft: supervised instruction fine-tuning for GPT-2 and T5 on the Hugging Face stack."""

__version__ = "0.1.0"
