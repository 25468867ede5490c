"""Corpus building: sources, harmonization, QC, parquet shards and loaders."""
