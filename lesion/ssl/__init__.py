"""Self-supervised pretraining: a jigsaw auto-encoder with InfoNCE invariance (after JIANet) on the fine-tuning encoder."""
