"""The worker role: MQTT ingest, delivery and every workflow, driven by exactly one process at
a time, the holder of the leader lease (docs/architecture.md)."""
