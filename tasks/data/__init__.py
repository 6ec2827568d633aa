"""Helpers, concern data: reading sources as they ship (`sources`), row and label checks (`checks`),
tagging schemes and their conversion to IOB2 (`schemes`), word-to-subword label alignment (`alignment`).
"""
