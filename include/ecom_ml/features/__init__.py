"""Feature building for the shop's models, one module per model (``recommender`` first).

Feature code is shared by training, evaluation and serving on purpose: a feature computed two ways
(once in a notebook-like training script, once in the serving path) drifts apart silently, so each
model's features live in exactly one function that every consumer calls.
"""
