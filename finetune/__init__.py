"""Fine-tuning stage: a thin layer over TRL's SFTTrainer, plus the project's one model-loading helper."""
