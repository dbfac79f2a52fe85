"""What every command shares: the settings, `--json`, and one way to report errors.

Each command is a ``Command``: it gets a ``--json`` flag, and a ``DropbatchError``
(or an OS error such as an unwritable file) raised anywhere below it becomes one
line on stderr and exit code 1, never a traceback. Usage errors stay click's
(exit code 2).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from dropbatch.context import Context
from dropbatch.errors import ConfigError, DropbatchError
from dropbatch.settings import Settings


@dataclass
class State:
    """``ctx.obj``: the environment the CLI was started with and the Settings built from it.

    Settings are built once, in the group callback. A ``ConfigError`` is kept and
    raised when a command first needs the settings, so the command's own
    ``--json`` decides how it is printed.
    """

    environ: Mapping[str, str]
    _settings: Settings | None = None
    _config_error: ConfigError | None = None
    _context: Context | None = field(default=None, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> State:
        try:
            return cls(environ=environ, _settings=Settings.from_env(environ))
        except ConfigError as exc:
            return cls(environ=environ, _config_error=exc)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise self._config_error or ConfigError("settings are not available")
        return self._settings

    @property
    def context(self) -> Context:
        """The S3-backed Context (built on first use; building it does no I/O)."""
        if self._context is None:
            self._context = Context.from_settings(self.settings)
        return self._context


def report_error(exc: DropbatchError, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(exc.to_openai()), err=True)
    else:
        message = " ".join(exc.message.split())
        click.echo(f"dropbatch: error: {message}", err=True)


class Command(click.Command):
    """A dropbatch command: adds ``--json`` and turns dropbatch errors into exit code 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON object on stdout (for scripts).")
        )

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.params.get("as_json"))
        try:
            return super().invoke(ctx)
        except DropbatchError as exc:
            report_error(exc, as_json=as_json)
        except BrokenPipeError:
            # `dropbatch results … | head`: the reader left; say nothing more.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            report_error(DropbatchError(f"{where}{exc.strerror or exc}", code="os_error"), as_json=as_json)
        ctx.exit(1)


class Group(click.Group):
    """A command group whose commands (and subgroups) are dropbatch ``Command``s."""

    command_class = Command
    group_class = type  # subgroups are Groups too


def emit(as_json: bool, payload: Mapping[str, Any], text: str | None) -> None:
    """The command's result: one JSON object with ``--json``, else ``text`` (if any) for people."""
    if as_json:
        click.echo(json.dumps(payload, default=str))
    elif text is not None:
        click.echo(text)


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """An event set by SIGTERM or the first Ctrl-C; a second Ctrl-C interrupts at once.

    Pass the event again to re-install the handlers after a library replaced them
    (``ray.init`` installs a SIGTERM handler that calls ``sys.exit``).
    """
    stop = stop or threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"
