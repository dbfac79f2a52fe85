"""The Terraform code is formatted, initializes offline from the provider mirror, and validates."""

from __future__ import annotations

import pytest
from deploy_helpers import TERRAFORM_DIR

pytestmark = pytest.mark.integration  # needs the terraform CLI and the provider mirror

ROOTS = ("local", "aws")


def test_terraform_is_formatted(terraform, tmp_path):
    proc = terraform(TERRAFORM_DIR, "fmt", "-check", "-recursive", "-diff", data_dir=tmp_path, check=False)
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}"


@pytest.mark.parametrize("root", ROOTS)
def test_root_initializes_offline_and_validates(terraform, tmp_path, root):
    # -lockfile=readonly: the committed lock file must already name the mirrored provider.
    terraform(TERRAFORM_DIR / root, "init", "-input=false", "-backend=false", "-lockfile=readonly", data_dir=tmp_path)
    proc = terraform(TERRAFORM_DIR / root, "validate", "-json", data_dir=tmp_path)
    assert '"valid": true' in proc.stdout, proc.stdout
