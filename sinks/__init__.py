"""Sinks: write clean topics into PostgreSQL in batches, idempotently."""
