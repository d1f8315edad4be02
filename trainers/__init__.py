"""Training for scope-hub dictionaries: data, harvesting, recipes, checkpoints, evaluation.

``python -m trainers CONFIG.yaml key=value ...`` runs a configured training;
the pieces are importable on their own (see docs/training.md).
"""
