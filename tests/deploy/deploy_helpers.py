"""Helpers for the deploy suite: repo paths and the terraform runner (missing tools: helpers.unavailable).

Import them as ``from deploy_helpers import ...`` (this folder is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
TERRAFORM_TIMEOUT = 600



class TerraformFailed(RuntimeError):
    """Raised when a terraform command exits non-zero; the message carries its output."""


@dataclass(frozen=True)
class Terraform:
    """Runs ``terraform -chdir=<root>`` offline, with its working data kept in ``data_dir``."""

    executable: str
    cli_config: Path

    def env(self, data_dir: Path) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "TF_CLI_CONFIG_FILE": str(self.cli_config),
            "TF_DATA_DIR": str(data_dir),
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
        }

    def __call__(
        self, root: Path, *args: str, data_dir: Path, check: bool = True, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.executable, f"-chdir={root}", *args],
            env={**self.env(data_dir), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=TERRAFORM_TIMEOUT,
            check=False,
        )
        if check and proc.returncode != 0:
            raise TerraformFailed(f"terraform {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc
