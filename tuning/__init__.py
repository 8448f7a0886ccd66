"""Optuna tuning of Noisy Student: the search space (space.py) and the study runner (study.py)."""
