"""Registers the entry points of the later stages with the CLI (kept apart so cli.py stays small)."""

from lesion import config as C
from lesion.cli import EntryPoint, register_entry_point

register_entry_point("pretrain", EntryPoint(
    C.PretrainConfig, "lesion.ssl.pretrain:run_pretrain",
    "Self-supervised pretraining of the encoder: a jigsaw-invariant auto-encoder on unlabelled images."))

register_entry_point("selftrain", EntryPoint(
    C.SelftrainConfig, "lesion.selftrain.loop:run_selftrain",
    "Noisy Student: teacher on labelled data, pseudo-labels for the unlabelled pool, noised students, repeated."))
