"""`dropbatch config`: every DROPBATCH_* variable, its value and what it is for.

``dropbatch config --markdown`` prints the settings table of the README (defaults,
not this shell's values), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from dropbatch.cli.common import Command, State, emit
from dropbatch.settings import ENV_VARS, Settings

SECRET_FIELDS = frozenset({("storage", "secret_access_key"), ("service", "admin_token")})
MASK = "***"

# For fields settings.py leaves without a Field(description=...); the README table
# needs every row explained. Once a description exists there, it wins.


def describe_settings(settings: Settings, environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per variable: name, fallbacks, current and default value, source, description."""
    defaults = Settings()
    # Values as the variables spell them (e.g. tier quotas as free=100,...), via to_env().
    current, default_env = settings.to_env(), defaults.to_env()
    rows = []
    for var, (group, name, _parse, fallbacks) in ENV_VARS.items():
        info = type(getattr(defaults, group)).model_fields[name]
        source = next((v for v in (var, *fallbacks) if environ.get(v)), None)
        value = current.get(var, "")
        if (group, name) in SECRET_FIELDS and value:
            value = MASK
        rows.append(
            {
                "variable": var,
                "also_read_from": list(fallbacks),
                "value": value,
                "default": default_env.get(var, ""),
                "source": source,
                "description": info.description or "",
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Variable | Default | Description |", "|---|---|---|"]
    for row in rows:
        name = f"`{row['variable']}`"
        if row["also_read_from"]:
            name += " (or " + ", ".join(f"`{v}`" for v in row["also_read_from"]) + ")"
        default = f"`{row['default']}`" if row["default"] else "unset"
        # Angle brackets (<tenant>) would be read as HTML tags.
        description = row["description"].replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| {name} | {default} | {description} |")
    return "\n".join(lines)


def plain_text(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        source = f"   (from {row['source']})" if row["source"] else ""
        lines.append(f"{row['variable']}={row['value']}{source}")
        if row["description"]:
            lines.append(f"    {row['description']}")
    return "\n".join(lines)


@click.command("config", cls=Command)
@click.option("--markdown", is_flag=True, help="The README's settings table (defaults, not current values).")
@click.pass_obj
def config_command(state: State, markdown: bool, as_json: bool) -> None:
    """List every DROPBATCH_* setting with its current value (secrets masked) and purpose."""
    rows = describe_settings(state.settings, state.environ)
    emit(as_json, {"settings": rows}, markdown_table(rows) if markdown else plain_text(rows))


COMMANDS = (config_command,)
