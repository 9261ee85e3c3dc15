"""Helpers for tests that start real servers: free ports, Mosquitto, PostgreSQL databases."""
