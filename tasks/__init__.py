"""The steps of the nerflow pipeline: one module per step, each a plain function plus a thin Prefect task."""
