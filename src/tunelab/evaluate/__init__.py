"""Evaluate stage: generate answers on the test split and score base vs tuned."""
