"""`dropbatch token create | list | revoke`: bearer tokens for the gateway.

A token is printed once, by `create`; the control bucket keeps only its sha256.
`list` shows ids, tenants, tiers and times, never a token. A revoked token
stops working on every gateway within the gateway's token cache time (2 s).
"""

from __future__ import annotations

import click

from dropbatch.auth.tokens import Tokens
from dropbatch.cli.common import Group, State, emit


def _tokens(state: State) -> Tokens:
    return state.context.tokens


@click.group("token", cls=Group)
def token_group() -> None:
    """Gateway API tokens (Authorization: Bearer …)."""


@token_group.command("create")
@click.option("--tenant", required=True, help="An existing tenant (`dropbatch tenant create`).")
@click.option("--tier", default=None, help="Rate-limit tier of this token; defaults to the tenant's tier.")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, help="Seconds until the token expires.")
@click.pass_obj
def token_create(state: State, tenant: str, tier: str | None, expires_in: int | None, as_json: bool) -> None:
    """Issue a token for TENANT; it is shown once."""
    issued = _tokens(state).create(tenant, tier=tier, expires_in=expires_in)
    record = issued.record
    text = "\n".join(
        [
            f"token id  {record.id}  (tenant {record.tenant}, tier {record.tier})",
            f"token     {issued.token}",
            "          (shown once: keep it; use it as the OpenAI SDK's api_key)",
        ]
    )
    emit(as_json, issued.shown_once() | {"expires_at": record.expires_at}, text)


@token_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's tokens.")
@click.pass_obj
def token_list(state: State, tenant: str | None, as_json: bool) -> None:
    """List tokens (ids and times; never the tokens themselves)."""
    records = [r.public() for r in _tokens(state).list(tenant)]
    lines = [f"{'ID':<20} {'TENANT':<20} {'TIER':<11} {'STATE':<8} LAST USED"]
    now = int(state.context.clock())
    for r in records:
        usable = r["revoked_at"] is None and (r["expires_at"] is None or now < r["expires_at"])
        state_text = "active" if usable else ("revoked" if r["revoked_at"] is not None else "expired")
        lines.append(f"{r['id']:<20} {r['tenant']:<20} {r['tier']:<11} {state_text:<8} {r['last_used'] or '-'}")
    emit(as_json, {"object": "list", "data": records}, "\n".join(lines))


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(state: State, token_id: str, as_json: bool) -> None:
    """Revoke TOKEN_ID: its next request to any gateway fails (within 2 s)."""
    record = _tokens(state).revoke(token_id)
    emit(as_json, record.public(), f"revoked {record.id} of tenant {record.tenant}")


COMMANDS = (token_group,)
