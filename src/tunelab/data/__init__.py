"""Prepare stage: load a table, map it to chat examples, de-duplicate and split."""
