"""lesion: label-efficient skin-lesion segmentation (SSL pretraining, fine-tuning, Noisy Student), tracked in MLflow."""

__version__ = "0.1.0"
