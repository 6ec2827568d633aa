"""The pipeline's steps (ingest, tokenize, train, evaluate, card, publish, track), one module each: a plain
typed function and a thin Prefect task over it. `refs.py` holds what they hand each other; the folders
below are the layers under the steps: `settings/` and `runtime/` at the bottom, one folder per concern above.
"""
