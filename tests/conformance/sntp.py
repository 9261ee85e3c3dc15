"""The conformance bench's clock reference: the simulator's SNTP server."""

from simulators.sntp import SntpServer

__all__ = ["SntpServer"]
