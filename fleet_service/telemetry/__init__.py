"""Telemetry into InfluxDB: the writer, its bounded on-disk buffer and the registry tags."""
