"""`dropbatch tenant create | grant | grants | revoke-grant`, `key create | revoke`: operator commands.

A signing key's secret is printed exactly once, here; the control bucket keeps it
for the watcher, and no other command shows it again.
"""

from __future__ import annotations

import click

from dropbatch.auth.grants import Grant
from dropbatch.cli.common import Group, State, emit

_KEEP_IT = "shown once: keep it; sign manifests with DROPBATCH_SIGNING_SECRET=… or --secret-file"


@click.group("tenant", cls=Group)
def tenant_group() -> None:
    """Tenants: who may drop jobs in the inbox, at which tier."""


@tenant_group.command("create")
@click.argument("name")
@click.option("--tier", default="free", show_default=True, help="free, basic, premium or enterprise (hourly request quota: each embeddings input and n choice counts).")
@click.pass_obj
def tenant_create(state: State, name: str, tier: str, as_json: bool) -> None:
    """Create tenant NAME and its first manifest signing key."""
    ctx = state.context
    tenant = ctx.tenants.create(name, tier)
    key = ctx.tenants.create_signing_key(tenant.name)
    quota = ctx.quotas.limit(tenant.tier)
    text = "\n".join(
        [
            f"tenant  {tenant.name}  ({tenant.tier}: {quota} requests per hour)",
            f"key id  {key.key_id}",
            f"secret  {key.secret}",
            f"        ({_KEEP_IT})",
        ]
    )
    emit(as_json, {"tenant": tenant.name, "tier": tenant.tier, "key_id": key.key_id, "secret": key.secret}, text)


def _grant_line(grant: Grant) -> str:
    modes = "+".join(m for m in ("read", "write", "overwrite") if getattr(grant, m))
    state = "active" if grant.revoked_at is None else "revoked"
    return f"{grant.id:<23} {state:<8} {modes:<20} {grant.uri}"


@tenant_group.command("grant")
@click.argument("name")
@click.argument("uri")
@click.option("--read", is_flag=True, help="NAME's /start jobs may read inputs under URI.")
@click.option("--write", is_flag=True, help="NAME's /start jobs may write results under URI.")
@click.option("--overwrite", is_flag=True, help="With --write: results may replace objects already there.")
@click.pass_obj
def tenant_grant(state: State, name: str, uri: str, read: bool, write: bool, overwrite: bool, as_json: bool) -> None:
    """Let tenant NAME read and/or write under URI (s3://bucket/prefix, outside dropbatch's buckets)."""
    grant = state.context.grants.create(name, uri, read=read, write=write, overwrite=overwrite)
    emit(as_json, grant.public(), f"granted {name}: {_grant_line(grant)}")


@tenant_group.command("grants")
@click.argument("name")
@click.pass_obj
def tenant_grants(state: State, name: str, as_json: bool) -> None:
    """List tenant NAME's grants, revoked ones included."""
    state.context.tenants.get(name)  # an unknown tenant is an error, not an empty list
    grants = list(state.context.grants.list(name))
    lines = [f"{'ID':<23} {'STATE':<8} {'MODES':<20} LOCATION", *(_grant_line(g) for g in grants)]
    emit(as_json, {"object": "list", "data": [g.public() for g in grants]}, "\n".join(lines))


@tenant_group.command("revoke-grant")
@click.argument("name")
@click.argument("grant_id")
@click.pass_obj
def tenant_revoke_grant(state: State, name: str, grant_id: str, as_json: bool) -> None:
    """Revoke GRANT_ID of tenant NAME: from now on /start and result copies refuse its location."""
    grant = state.context.grants.revoke(name, grant_id)
    emit(as_json, grant.public(), f"revoked {grant.id} of tenant {name} ({grant.uri})")


@click.group("key", cls=Group)
def key_group() -> None:
    """Manifest signing keys."""


@key_group.command("create")
@click.option("--tenant", required=True)
@click.pass_obj
def key_create(state: State, tenant: str, as_json: bool) -> None:
    """Create another signing key for a tenant (e.g. to rotate)."""
    key = state.context.tenants.create_signing_key(tenant)
    text = f"key id  {key.key_id}\nsecret  {key.secret}\n        ({_KEEP_IT})"
    emit(as_json, {"tenant": key.tenant, "key_id": key.key_id, "secret": key.secret}, text)


@key_group.command("revoke")
@click.argument("key_id")
@click.pass_obj
def key_revoke(state: State, key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID: manifests signed with it are rejected from now on."""
    key = state.context.tenants.revoke_signing_key(key_id)
    emit(
        as_json,
        {"tenant": key.tenant, "key_id": key.key_id, "revoked_at": key.revoked_at},
        f"revoked {key.key_id} of tenant {key.tenant}",
    )


COMMANDS = (tenant_group, key_group)
