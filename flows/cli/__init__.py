"""Operator tools, the top layer: the `nerflow` command (`main`), `nerflow serve`'s supervised server and
worker (`serve`), work pools from the packaged templates (`pools`).
"""
