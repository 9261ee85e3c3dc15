"""Firmware releases: application bundles of the receivers' firmware (its modules compiled to
.mpy and a manifest naming each file by length and SHA-256), signed offline with Ed25519,
checked against the service's trusted keys on upload, stored, listed and withdrawn.

Rollouts to receivers and the installation on a receiver build on these and are not written
yet (docs/firmware-updates.md)."""
