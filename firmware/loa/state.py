# Persistent receiver state: the session counter of docs/protocol.md. It is incremented and
# written to flash *before* every MQTT CONNECT, so a counter value is never used twice, even
# if the power goes right after the CONNECT.

from loa import files

SESSION_MAX = 0xFFFFFFFF  # unsigned 32-bit; wraps to 1


class State:
    def __init__(self, path="state.json"):
        self.path = path
        stored = files.read_json(path) or {}
        session = stored.get("session", 0)
        if not isinstance(session, int) or not 0 <= session <= SESSION_MAX:
            session = 0
        self.session = session

    def next_session(self):
        """Increment, persist, and return the new session counter."""
        session = self.session % SESSION_MAX + 1
        files.write_json(self.path, {"session": session})
        self.session = session
        return session
