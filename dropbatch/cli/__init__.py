"""The `dropbatch` command line: one entry point for the services and for clients.

Commands live in small modules, each exporting ``COMMANDS``; adding a module to
``COMMAND_MODULES`` is all it takes to register more. Heavy libraries (ray, vllm,
torch) are imported inside the commands that need them, so ``dropbatch --help``
and the client commands stay fast.
"""

from __future__ import annotations

import os

import click

from dropbatch import __version__
from dropbatch.cli import admin, batches, config, jobs, services, tokens
from dropbatch.cli.common import Group, State

COMMAND_MODULES = (services, admin, jobs, batches, config, tokens)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dropbatch")
@click.pass_context
def main(ctx: click.Context) -> None:
    """dropbatch: an S3 drop-box for OpenAI batch JSONL, run by vLLM through Ray Data.

    Settings come from DROPBATCH_* environment variables (`dropbatch config` lists them).
    """
    ctx.obj = State.from_environ(os.environ)


for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)
