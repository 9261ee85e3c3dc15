"""The tests' audio streams: the simulator's stream server (simulators/stream_server.py)."""

from simulators.stream_server import StreamServer, mp3_audio, mp3_file, silent_mp3

__all__ = ["StreamServer", "mp3_audio", "mp3_file", "silent_mp3"]
