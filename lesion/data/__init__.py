"""Data: sources, validation, splits and manifests, the preprocessing cache, transforms, datasets."""
