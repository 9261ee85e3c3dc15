# The application slots (see main.py): make the running slot the active one.

from loa import files

SLOTS_FILE = "slots.json"


def commit(slot):
    """The running slot has proven itself (it connected): boot it from now on."""
    if slot in ("a", "b"):
        files.write_json(SLOTS_FILE, {"active": slot})


def active():
    info = files.read_json(SLOTS_FILE) or {}
    return info.get("active", "a")


def mark_trial(slot):
    """Run ``slot`` once, on trial, at the next boot (main.py removes the mark before it runs
    it); the active slot stays what it is until the trial slot commits itself."""
    files.write_json(SLOTS_FILE, {"active": active(), "trial": slot})
