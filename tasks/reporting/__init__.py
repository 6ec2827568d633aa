"""Helpers, concern reporting: pictures for the card (`plots`), experiment trackers (`trackers`), the
model card's template (`model_card.jinja`).
"""
