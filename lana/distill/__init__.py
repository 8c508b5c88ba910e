"""Layer-wise feature-map distillation of candidates, swap-one scores and fine-tuning."""
