"""Foundation, runtime services every layer may use: atomic files, seals and locks (`files`), Prefect
cache keys and result records (`caching`), retries (`retry`), errors users can fix (`errors`), logs
(`logs`), secrets (`secrets`), the S3 client (`s3`), Hub access and its errors (`hub_access`), child
processes that die with their parent (`lifeline`).
"""
