"""``python -m simulators ...``: the same commands as ``loa simulate``."""

from simulators.cli import simulate_app

simulate_app(prog_name="python -m simulators")
