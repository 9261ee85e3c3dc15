"""Side effects that follow a committed change: recorded with the change, applied by the service
that runs the MQTT side (the worker), retried until they succeed (docs/security.md)."""
