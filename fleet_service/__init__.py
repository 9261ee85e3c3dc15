"""Loa fleet service: registry, MQTT ingest, uptime ledger and the API around them."""
