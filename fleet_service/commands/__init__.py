"""Commands to receivers (play, stop, volume, reboot, config, schedule): per-target delivery
and outcome, redelivery to receivers that were offline, and the audit log."""
