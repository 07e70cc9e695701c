"""The audit trail: events published to JetStream, written to Postgres by the sink, hash-chained."""
