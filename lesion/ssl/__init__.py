"""Self-supervised pretraining: a jigsaw-invariant auto-encoder (after JIANet) on the fine-tuning encoder."""
