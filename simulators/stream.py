"""The audio stream player of a virtual receiver: a real HTTP GET of the stream URL (httpx,
asyncio), read until the first audio bytes arrive, then read at the pace the server sends.

Fetching costs a connection and a task per playing receiver, so a fleet can instead
*simulate* playback (``ReceiverConfig.fetch_streams``): the stream is taken as reachable and its
bytes are counted at the nominal bitrate. See docs/simulator.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx

# From the GET to the first audio bytes: longer, and the stream counts as unreachable. A
# receiver on 4G waits about this long before it gives up on a stream server.
STREAM_OPEN_TIMEOUT_S = 10.0
# Between two reads of a playing stream: longer, and the stream has stalled (stream_error).
STREAM_READ_TIMEOUT_S = 15.0
# Bytes examined for the first MPEG audio frame header (an ID3 tag may come first).
HEADER_SEARCH_BYTES = 16 * 1024

# kbit/s by bitrate index (1..14), ISO 11172-3 and 13818-3.
_MPEG1_LAYER3 = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG1_LAYER2 = (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384)
_MPEG1_LAYER1 = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448)
_MPEG2_LAYER23 = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MPEG2_LAYER1 = (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256)


class StreamUnreachable(Exception):
    """The stream could not be opened: no connection, an HTTP error, or no audio in time."""


def mpeg_bitrate(data: bytes) -> int | None:
    """The bitrate (kbit/s) in the first MPEG audio frame header of ``data``, or None."""
    end = min(len(data), HEADER_SEARCH_BYTES) - 3
    i = data.find(b"\xff", 0, end)
    while 0 <= i < end:
        b1, b2 = data[i + 1], data[i + 2]
        version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3   # version 1 reserved, layer 0 reserved
        index, rate = b2 >> 4, (b2 >> 2) & 3
        if (b1 & 0xE0) == 0xE0 and version != 1 and layer and 0 < index < 15 and rate != 3:
            if version == 3:
                table = {3: _MPEG1_LAYER1, 2: _MPEG1_LAYER2, 1: _MPEG1_LAYER3}[layer]
            else:
                table = _MPEG2_LAYER1 if layer == 3 else _MPEG2_LAYER23
            return table[index - 1]
        i = data.find(b"\xff", i + 1, end)
    return None


class Stream:
    """One open stream. :meth:`open` returns once audio has arrived; :meth:`play` then reads
    it to the end, counting bytes."""

    __slots__ = ("url", "kbps", "_response", "_chunks", "_first")

    def __init__(self, url: str, response: httpx.Response, chunks: AsyncIterator[bytes], first: bytes) -> None:
        self.url = url
        self._response = response
        self._chunks = chunks
        self._first = first
        self.kbps = mpeg_bitrate(first)

    @classmethod
    async def open(cls, client: httpx.AsyncClient, url: str, *, timeout: float = STREAM_OPEN_TIMEOUT_S) -> Stream:
        try:
            async with asyncio.timeout(timeout):
                response = await client.send(client.build_request("GET", url), stream=True)
                if response.status_code != 200:
                    await response.aclose()
                    raise StreamUnreachable(f"HTTP {response.status_code} from {url}")
                chunks = response.aiter_raw()
                first = b""
                try:
                    while len(first) < 4:  # enough for a frame header
                        first += await anext(chunks)
                except StopAsyncIteration:
                    await response.aclose()
                    raise StreamUnreachable(f"{url} ended before any audio") from None
        except TimeoutError:
            raise StreamUnreachable(f"no audio from {url} within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise StreamUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        return cls(url, response, chunks, first)

    async def play(self, received: Callable[[int], None]) -> None:
        """Read to the end of the stream (returns) or until it fails (raises OSError or
        httpx.HTTPError, TimeoutError when it stalls), calling ``received(bytes)`` as data comes."""
        first, self._first = self._first, b""
        if first:
            received(len(first))
        try:
            while True:
                async with asyncio.timeout(STREAM_READ_TIMEOUT_S):
                    chunk = await anext(self._chunks)
                received(len(chunk))
        except StopAsyncIteration:
            return
        finally:
            await self._response.aclose()

    async def close(self) -> None:
        await self._response.aclose()
