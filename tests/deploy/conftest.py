"""Fixtures for the deploy suite.

terraform     session: a ``Terraform`` runner (the binary + a CLI config for the offline
              provider mirror, written by terraform/cli-config.sh as `make tf-check` does)
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from deploy_helpers import TERRAFORM_DIR, Terraform
from helpers import unavailable


@pytest.fixture(scope="session")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    executable = shutil.which("terraform")
    if executable is None:
        unavailable("terraform is not on PATH")
    cli_config = tmp_path_factory.mktemp("terraform") / "cli.tfrc"
    subprocess.run([str(TERRAFORM_DIR / "cli-config.sh"), str(cli_config)], check=True, capture_output=True, timeout=60)
    return Terraform(executable=executable, cli_config=cli_config)
