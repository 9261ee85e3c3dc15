"""Alerts to maintenance crews: rules over the live state, incidents, silences."""
