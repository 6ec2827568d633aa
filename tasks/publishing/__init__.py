"""Helpers, concern publishing: the quality gate (`gate`), the Hugging Face Hub (`hub`) and S3 (`s3`) as
publish targets, each keyed on what is published so a retry publishes once.
"""
