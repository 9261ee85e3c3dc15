# Chooses the application slot and runs it.
#
# Flash layout:  /boot.py  /main.py  /slots.json  /a/loa/...  /b/loa/...
#                /config.json (per device)  /state.json (session counter)  /ca.crt
#
# slots.json is {"active": "a"} or, after an update was written into the other slot,
# {"active": "a", "trial": "b"}. A trial slot runs once: the trial mark is removed *before*
# it starts, and the new version makes itself active only after it has connected to the
# broker. If it crashes, hangs (watchdog) or never connects and the board resets, the next
# boot runs the active slot again. Without any slot (a development checkout, loa on
# sys.path) the application runs from where it is found ("dev").

import sys

SLOTS_FILE = "slots.json"
SLOTS = ("a", "b")


def _read_slots():
    try:
        import json

        with open(SLOTS_FILE) as f:
            value = json.loads(f.read(256))
        if isinstance(value, dict):
            return value
    except (OSError, ValueError):
        pass
    return {}


def _write_slots(value):
    import json
    import os

    tmp = SLOTS_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(value))
    try:
        os.rename(tmp, SLOTS_FILE)
    except OSError:
        os.remove(SLOTS_FILE)
        os.rename(tmp, SLOTS_FILE)


def _has_app(slot):
    import os

    try:
        os.stat(slot + "/loa/app.py")
        return True
    except OSError:
        pass
    try:
        os.stat(slot + "/loa/app.mpy")
        return True
    except OSError:
        return False


def select():
    """(slot, trial): the slot to run, and whether it runs on trial."""
    info = _read_slots()
    active = info.get("active")
    if active not in SLOTS:
        active = "a"
    trial = info.get("trial")
    if trial in SLOTS and trial != active and _has_app(trial):
        _write_slots({"active": active})
        return trial, True
    other = "b" if active == "a" else "a"
    for slot in (active, other):
        if _has_app(slot):
            return slot, False
    return "dev", False


def run():
    slot, trial = select()
    if slot != "dev":
        sys.path.insert(0, slot)
    from loa import app

    app.main(slot=slot, trial=trial)


try:
    run()
except KeyboardInterrupt:
    raise
except Exception as exc:
    sys.print_exception(exc)
    if sys.platform == "esp32":
        import time

        import machine

        time.sleep(10)  # do not spin: a broken config would otherwise reset without pause
        machine.reset()
    sys.exit(1)
