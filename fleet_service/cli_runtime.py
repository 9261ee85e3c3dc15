"""The runtime of a ``loa`` command that works on the database itself (the registry, users and
tokens, the audit log), as whoever administers the server: the database of LOA_DATABASE_URL,
migrated to head, and the command recorded in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fleet_service.cli_support import error
from fleet_service.config import get_settings
from fleet_service.errors import LoaError
from fleet_service.runtime import Runtime


@contextmanager
def cli_runtime() -> Iterator[Runtime]:
    """A runtime for one CLI command: the database of LOA_DATABASE_URL, migrated to head. A
    command that may change the database is recorded in the audit log when it ends, whether it
    succeeded or was refused."""
    from fleet_service.migrations import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    command = _running_command()
    try:
        yield runtime
    except BaseException as exc:
        if command is not None:
            _audit(runtime, command, exc)
        raise
    else:
        if command is not None:
            _audit(runtime, command, None)
    finally:
        runtime.close()


def _running_command() -> tuple[list[str], dict[str, object]] | None:
    """The running ``loa`` command's path (["receivers", "revoke"]) and arguments, if it may
    change the database."""
    try:  # typer carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context

    from fleet_service.audit.service import cli_changes

    ctx = get_current_context(silent=True)
    if ctx is None:  # called from Python, not from the command line
        return None
    path: list[str] = []
    node = ctx
    while node is not None and node.parent is not None:  # the root is "loa", whatever it was run as
        path.insert(0, node.info_name or "")
        node = node.parent
    if not cli_changes(path):
        return None
    # In the order the command declares them, as its usage line shows them.
    names = [param.name for param in ctx.command.params if param.name in ctx.params]
    return path, {name: ctx.params[name] for name in names}


def _audit(runtime: Runtime, command: tuple[list[str], dict[str, object]], failure: BaseException | None) -> None:
    from fleet_service.audit.service import cli_entry, record

    record(runtime.sessions, cli_entry(*command, failure))


@contextmanager
def loa_command() -> Iterator[Runtime]:
    """The runtime of one command; a domain error becomes a readable message and exit code 1."""
    try:
        with cli_runtime() as runtime:
            yield runtime
    except LoaError as exc:
        raise error(exc.message_vi, exc.message_en) from None
