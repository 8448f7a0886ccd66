"""Noisy Student self-training: stages, pseudo-labelling, the registry gate."""
