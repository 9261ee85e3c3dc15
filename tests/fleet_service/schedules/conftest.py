from tests.fleet_service.commands.conftest import fleet, receiver  # noqa: F401  (the same running service)
