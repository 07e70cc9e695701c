"""Postgres: the audit ledger and the results of queued work. Never on the request hot path."""
