"""Per-tenant grants in Terraform: the gateway role may reach exactly the granted bucket/prefix pairs.

terraform/local is planned (never applied) against the shared moto server, which
only answers the provider's caller-identity lookup; the grant statements are built
from names alone, so the plan shows them in full. One ``init`` for the module, one
plan per case (each ~5-40 s, depending on the machine's load). The default, no grants,
is applied by test_terraform_local.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_helpers import TERRAFORM_DIR, Terraform

pytestmark = pytest.mark.integration

ROOT = TERRAFORM_DIR / "local"
GRANTS = {
    "acme": [
        {"bucket": "acme-data", "prefix": "in/", "read": True},
        {"bucket": "acme-data", "prefix": "out", "write": True},
    ],
    "beta": [{"bucket": "beta-all", "read": True, "write": True}],
}


@pytest.fixture(scope="module")
def plan(
    terraform: Terraform, moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict], subprocess.CompletedProcess[str]]:
    """``plan(tenant_grants)`` → the failed plan, or ``terraform show -json`` of the saved one."""
    work: Path = tmp_path_factory.mktemp("tf-grants")
    data = work / "data"
    terraform(
        ROOT, "init", "-input=false", "-lockfile=readonly", f"-backend-config=path={work / 'tfstate'}", data_dir=data
    )

    def run(grants: dict) -> subprocess.CompletedProcess[str]:
        saved = work / f"plan-{len(list(work.glob('plan-*')))}"
        proc = terraform(
            ROOT,
            "plan",
            "-input=false",
            "-refresh=false",
            "-lock=false",
            "-no-color",
            f"-out={saved}",
            f"-var=endpoint={moto_server}",
            f"-var=tenant_grants={json.dumps(grants)}",
            data_dir=data,
            check=False,
        )
        return proc if proc.returncode != 0 else terraform(ROOT, "show", "-json", str(saved), data_dir=data)

    return run


def _as_set(value: str | list[str]) -> set[str]:
    return set(value) if isinstance(value, list) else {value}


def test_the_gateway_may_reach_exactly_the_granted_prefixes(plan) -> None:
    shown = plan(GRANTS)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    outputs = json.loads(shown.stdout)["planned_values"]["outputs"]
    statements = {st["Sid"]: st for st in json.loads(outputs["gateway_grants_policy"]["value"])["Statement"]}
    assert set(statements) == {"GrantList0", "GrantList1", "GrantRead", "GrantWrite"}

    # A prefix grant covers the prefix and what lies below it, by whole segments (never acme-data/inx).
    assert _as_set(statements["GrantRead"]["Resource"]) == {
        "arn:aws:s3:::acme-data/in",
        "arn:aws:s3:::acme-data/in/*",
        "arn:aws:s3:::beta-all/*",
    }
    assert _as_set(statements["GrantWrite"]["Resource"]) == {
        "arn:aws:s3:::acme-data/out",
        "arn:aws:s3:::acme-data/out/*",
        "arn:aws:s3:::beta-all/*",
    }
    assert _as_set(statements["GrantRead"]["Action"]) == {"s3:GetObject"}
    assert "s3:PutObject" in _as_set(statements["GrantWrite"]["Action"])
    assert "s3:GetObject" not in _as_set(statements["GrantWrite"]["Action"])
    listing = statements["GrantList0"]
    assert (listing["Resource"], listing["Condition"]["StringLike"]["s3:prefix"]) == (
        "arn:aws:s3:::acme-data",
        ["in", "in/*", "out", "out/*"],
    )
    whole = statements["GrantList1"]
    assert whole["Resource"] == "arn:aws:s3:::beta-all" and "Condition" not in whole
    assert outputs["grant_commands"]["value"] == [
        "dropbatch tenant grant acme s3://acme-data/in --read",
        "dropbatch tenant grant acme s3://acme-data/out --write",
        "dropbatch tenant grant beta s3://beta-all/ --read --write",
    ]


@pytest.mark.parametrize(
    ("grant", "says"),
    [
        ({"bucket": "acme-data", "prefix": "in/../other", "read": True}, "Each grant needs"),
        ({"bucket": "dropbatch-outbox", "prefix": "acme", "read": True}, "may not name a dropbatch bucket"),
    ],
)
def test_a_bad_grant_fails_the_plan(plan, grant: dict, says: str) -> None:
    failed = plan({"acme": [grant]})
    assert failed.returncode != 0
    assert says in " ".join((failed.stdout + failed.stderr).split()), failed.stdout + failed.stderr
