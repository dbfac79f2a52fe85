"""The `dropbatch` command line through click's CliRunner: shapes, exit codes, secrets.

Nothing here needs a server: these commands either work on local files (sign,
sample, config) or fail before any I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dropbatch.cli import main
from dropbatch.cli.common import Command
from dropbatch.jsonl import iter_lines, parse_request_line
from dropbatch.models import ENDPOINTS
from dropbatch.settings import ENV_VARS
from manifests import file_digest, loads, verify_signature

SECRET = "s3cr3t-signing-key-for-tests"


def invoke(args: list[str], env: dict[str, str] | None = None) -> click.testing.Result:
    # Every variable Settings reads cleared, so the shell running pytest cannot leak in.
    names = {"DROPBATCH_SIGNING_SECRET", *ENV_VARS, *(f for spec in ENV_VARS.values() for f in spec[3])}
    clean: dict[str, str | None] = dict.fromkeys(names)
    return CliRunner().invoke(main, args, env={**clean, **(env or {})}, catch_exceptions=False)


def write_input(path: Path, n: int = 5, model: str = "dropbatch-tiny") -> Path:
    result = invoke(["sample", "--n", str(n), "--model", model, "-o", str(path)])
    assert result.exit_code == 0, result.stderr
    return path


def test_manifest_sign_writes_the_canonical_signed_manifest(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl", model="served-name")
    out = tmp_path / "manifest.json"
    result = invoke(
        ["manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", "key_abc",
         "--metadata", "team=search", "--metadata", "run=7", "--completion-window", "1h", "-o", str(out), "--json"],
        env={"DROPBATCH_SIGNING_SECRET": SECRET, "DROPBATCH_MODEL_NAME": "served-name"},
    )
    assert result.exit_code == 0, result.stderr
    raw = out.read_bytes()
    manifest = loads(raw)  # raises unless the bytes are exactly the canonical form
    verify_signature(manifest, SECRET)
    sha256, size = file_digest(data)
    assert [(i.key, i.sha256, i.size) for i in manifest.inputs] == [("acme/j1/input.jsonl", sha256, size)]
    assert manifest.model == "served-name"  # the default comes from DROPBATCH_MODEL_NAME
    assert manifest.endpoint == "/v1/chat/completions"
    assert manifest.metadata == {"team": "search", "run": "7"}
    assert manifest.completion_window == "1h"
    payload = json.loads(result.stdout)
    assert payload["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    assert payload["manifest_uri"] == "s3://dropbatch-inbox/acme/j1/manifest.json"
    assert SECRET not in result.stdout + result.stderr


def test_manifest_sign_reads_the_secret_from_a_file_or_tenant_create_json(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl")
    plain = tmp_path / "secret.txt"
    plain.write_text(SECRET + "\n")
    as_json = tmp_path / "key.json"
    as_json.write_text(json.dumps({"tenant": "acme", "tier": "basic", "key_id": "key_abc", "secret": SECRET}))
    for secret_file in (plain, as_json):
        out = tmp_path / f"manifest-{secret_file.stem}.json"
        result = invoke(
            ["manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", "key_abc",
             "--secret-file", str(secret_file), "-o", str(out)]
        )
        assert result.exit_code == 0, result.stderr
        verify_signature(loads(out.read_bytes()), SECRET)


def test_manifest_sign_without_a_secret_fails_with_one_json_error(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl")
    out = tmp_path / "manifest.json"
    result = invoke(["manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", "key_abc",
                     "-o", str(out), "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "config_error"
    assert "DROPBATCH_SIGNING_SECRET" in error["message"]
    assert not out.exists()


def test_the_secret_is_never_a_command_line_argument(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl")
    result = invoke(["manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", "key_abc",
                     "--secret", SECRET])
    assert result.exit_code == 2  # a usage error: no such option


def test_manifest_sign_rejects_a_bad_tenant_name_without_a_traceback(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl")
    result = invoke(["manifest", "sign", str(data), "--tenant", "../etc", "--job", "j1", "--key-id", "key_abc"],
                    env={"DROPBATCH_SIGNING_SECRET": SECRET})
    assert result.exit_code == 1
    assert result.stderr.startswith("dropbatch: error: tenant '../etc'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_manifest_sign_refuses_lines_admission_would_refuse_naming_line_and_field(tmp_path: Path) -> None:
    data = write_input(tmp_path / "input.jsonl", n=4)
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    lines[1]["body"]["frobnicate"] = True
    lines[2]["body"]["prediction"] = {"type": "content", "content": "x"}
    lines[3]["custom_id"] = lines[0]["custom_id"]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "manifest.json"
    args = ["manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", "key_abc", "-o", str(out)]

    result = invoke([*args, "--json"], env={"DROPBATCH_SIGNING_SECRET": SECRET})

    assert result.exit_code == 1 and not out.exists()
    error = json.loads(result.stderr)["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", "body.frobnicate")
    for said in ("Line 2: body.frobnicate", "Line 3: body.prediction", "Line 4: custom_id"):
        assert said in error["message"]
    other_model = invoke(args + ["--model", "another-model"], env={"DROPBATCH_SIGNING_SECRET": SECRET})
    assert other_model.exit_code == 1 and "does not match the batch model 'another-model'" in other_model.stderr
    data.write_text("\n\n")
    empty = invoke(args, env={"DROPBATCH_SIGNING_SECRET": SECRET})
    assert empty.exit_code == 1 and "The input has no request lines." in empty.stderr and not out.exists()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_sample_writes_valid_unique_request_lines(tmp_path: Path, endpoint: str) -> None:
    out = tmp_path / "sample.jsonl"
    result = invoke(["sample", "--n", "40", "--endpoint", endpoint, "-o", str(out), "--json"],
                    env={"DROPBATCH_MODEL_NAME": "m1"})
    assert result.exit_code == 0, result.stderr
    raw = out.read_bytes()
    lines = [parse_request_line(r, endpoint=endpoint, model="m1") for r in iter_lines([raw], max_line_bytes=1 << 20)]
    assert len(lines) == 40
    assert len({line.custom_id for line in lines}) == 40
    assert len({json.dumps(line.body, sort_keys=True) for line in lines}) > 10  # varied prompts
    payload = json.loads(result.stdout)
    assert payload == {
        "path": str(out), "lines": 40, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
        "endpoint": endpoint, "model": "m1",
    }
    if endpoint != "/v1/embeddings":
        budget = "max_output_tokens" if endpoint == "/v1/responses" else "max_tokens"
        assert {(line.body[budget], line.body["temperature"]) for line in lines} == {(32, 0)}


def test_sample_is_reproducible_and_can_write_to_stdout() -> None:
    first = invoke(["sample", "--n", "12", "--seed", "3"])
    second = invoke(["sample", "--n", "12", "--seed", "3"])
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout
    assert len(first.stdout.splitlines()) == 12


def test_config_masks_secrets_and_lists_every_variable() -> None:
    env = {"DROPBATCH_SECRET_ACCESS_KEY": "aws-secret-value", "DROPBATCH_ADMIN_TOKEN": "admin-token-value",
           "DROPBATCH_GATEWAY_PORT": "8123"}
    result = invoke(["config", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    rows = {row["variable"]: row for row in json.loads(result.stdout)["settings"]}
    assert set(rows) == set(ENV_VARS)
    assert rows["DROPBATCH_SECRET_ACCESS_KEY"]["value"] == "***"
    assert rows["DROPBATCH_ADMIN_TOKEN"]["value"] == "***"
    assert (rows["DROPBATCH_GATEWAY_PORT"]["value"], rows["DROPBATCH_GATEWAY_PORT"]["default"]) == ("8123", "8000")
    assert all(row["description"] for row in rows.values())
    for args in (["config"], ["config", "--markdown"]):
        text = invoke(args, env=env).stdout
        assert "aws-secret-value" not in text and "admin-token-value" not in text


def test_config_markdown_is_a_table_of_defaults() -> None:
    result = invoke(["config", "--markdown"], env={"DROPBATCH_GATEWAY_PORT": "8123"})
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["| Variable | Default | Description |", "|---|---|---|"]
    assert len(lines) == 2 + len(ENV_VARS)
    assert "| `DROPBATCH_GATEWAY_PORT` | `8000` |" in result.stdout


def test_an_invalid_setting_is_one_error_line_not_a_traceback() -> None:
    result = invoke(["config", "--json"], env={"DROPBATCH_GATEWAY_PORT": "eighty"})
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"]["code"] == "config_error"
    text = invoke(["config"], env={"DROPBATCH_GATEWAY_PORT": "eighty"})
    assert text.stderr.startswith("dropbatch: error: DROPBATCH_GATEWAY_PORT='eighty'")


def test_up_refuses_a_taken_service_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {name: value for name, value in os.environ.items() if not name.startswith(("DROPBATCH_", "AWS_"))}
        env |= {"DROPBATCH_RUNNER_PORT": str(port), "DROPBATCH_HOME": str(tmp_path / "home")}
        # Its own process: `up` takes over SIGINT and SIGTERM.
        result = subprocess.run([str(Path(sys.executable).parent / "dropbatch"), "up", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    error = json.loads(result.stderr)["error"]
    assert f"127.0.0.1:{port} is already in use" in error["message"] and "DROPBATCH_RUNNER_PORT" in error["message"]
    assert not (tmp_path / "home").exists()  # no S3 server, model or service was started


def test_status_rejects_a_malformed_job_reference_before_any_io() -> None:
    result = invoke(["status", "no-slash", "--json"], env={"DROPBATCH_S3_ENDPOINT": "http://127.0.0.1:9"})
    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"]["code"] == "invalid_job"


def _leaf_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _leaf_commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


def test_every_command_takes_json() -> None:
    leaves = _leaf_commands(main)
    names = {name for name, _ in leaves}
    assert {"up", "bootstrap", "watcher", "runner", "gateway", "tenant create", "tenant grant", "tenant grants",
            "tenant revoke-grant", "key create", "key revoke",
            "manifest sign", "submit", "status", "results", "sample", "config"} <= names
    for name, command in leaves:
        assert isinstance(command, Command), name
        assert "--json" in {opt for param in command.params for opt in getattr(param, "opts", [])}, name


def test_help_does_not_import_the_engine() -> None:
    code = (
        "import sys\n"
        "from dropbatch.cli import main\n"
        "for args in (['--help'], ['runner', '--help'], ['up', '--help'], ['status', '--help']):\n"
        "    try:\n"
        "        main(args, prog_name='dropbatch')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('ray', 'vllm', 'torch', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_readme_settings_table_is_what_config_markdown_prints() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = invoke(["config", "--markdown"]).stdout.strip()
    assert table in readme, "README.md is stale: paste `dropbatch config --markdown` into its Settings section"
