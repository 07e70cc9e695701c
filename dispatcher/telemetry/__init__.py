"""Telemetry shared by every process: traces (OpenTelemetry), Prometheus metrics, JSON logs."""
