"""Helpers, concern prediction: a trained model tagging words and texts (`tagger`), and whole files in and
out, scored against gold tags when they have them (`files`).
"""
