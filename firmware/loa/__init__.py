# Loa receiver firmware. Layers, each replaceable: hal (the board), link (modem or Wi-Fi,
# behind the board), mqtt (the session), app (the protocol of docs/protocol.md).

VERSION = "0.1.0"
# The "fw" field of births and telemetry (at most 32 characters).
FIRMWARE = "loa-fw-" + VERSION


def unload(name):
    """Let the rarely used module loa.<name> go: its code returns to the heap, and the next
    import loads it again."""
    import sys

    sys.modules.pop("loa." + name, None)
    globals().pop(name, None)  # the attribute its import set on this package
