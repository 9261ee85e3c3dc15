# Small JSON files on flash, written so that a power cut never leaves a half-written one:
# write "<name>.tmp", flush it, then rename it over "<name>". If the cut comes between the
# removal of the old file and the rename (file systems that cannot rename over a file), the
# complete ".tmp" is still there and read instead.

import json
import os

# Largest file read back by default: config and state are a few hundred bytes. Anything
# bigger is corrupt, and reading it could exhaust the heap. (The schedule, up to 24 slots with
# long stream URLs, passes its own limit.)
MAX_FILE = 4096


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _read(path, limit):
    # Checked before reading, and read at its own size: a buffer of the limit would need a
    # block that large free in a fragmented heap.
    if os.stat(path)[6] > limit:
        raise ValueError("file too large")
    with open(path) as f:
        value = json.load(f)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def read_json(path, limit=MAX_FILE):
    """The object stored at ``path``, or None if there is none (or it is unreadable)."""
    for candidate in (path, path + ".tmp"):
        if _exists(candidate):
            try:
                return _read(candidate, limit)
            except (OSError, ValueError):
                pass
    return None


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)  # written as it is encoded: no string of the whole file in the heap
        f.flush()
    sync = getattr(os, "sync", None)
    if sync is not None:
        sync()
    try:
        os.rename(tmp, path)
    except OSError:
        # FAT cannot rename over an existing file: remove it first (read_json falls back to
        # the .tmp if the power goes in between).
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)
