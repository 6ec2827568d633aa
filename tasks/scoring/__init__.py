"""Helpers, concern scoring: the model's forward pass over batches (`inference`), word tags from its scores
(`decoding`), seqeval scores per word and entity (`metrics`).
"""
