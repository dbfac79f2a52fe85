"""Settings: defaults, parsing every variable type, failures that name the variable, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropbatch.errors import ConfigError
from dropbatch.settings import DEFAULT_TIER_QUOTAS, ENV_VARS, Settings


def test_defaults(make_settings) -> None:
    s = make_settings()
    assert s == Settings()
    assert (s.storage.inbox_bucket, s.storage.outbox_bucket, s.storage.control_bucket) == (
        "dropbatch-inbox",
        "dropbatch-outbox",
        "dropbatch-control",
    )
    assert s.storage.endpoint_url is None and s.storage.access_key_id is None
    assert s.engine.model_name == "dropbatch-tiny"
    assert s.limits.max_file_lines == 50_000 and s.limits.max_file_bytes == 200 * 1024 * 1024
    assert s.limits.tier_quotas == {"free": 100, "basic": 500, "premium": 2000, "enterprise": 10000}
    assert s.limits.completion_windows == {"24h": 24 * 3600, "1h": 3600}
    assert s.limits.priority_window_tiers == ("premium", "enterprise") and s.limits.sla_admission == "reject"


def test_every_variable_maps_to_a_real_field() -> None:
    s = Settings()
    for var, (group, field, _parse, _fallbacks) in ENV_VARS.items():
        assert var.startswith("DROPBATCH_")
        assert field in type(getattr(s, group)).model_fields, var


@pytest.mark.parametrize(
    "raw, value",
    [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_bool(make_settings, raw: str, value: bool) -> None:
    assert make_settings(DROPBATCH_ENFORCE_EAGER=raw).engine.enforce_eager is value
    assert make_settings(DROPBATCH_ENABLE_PREFIX_CACHING=raw).engine.enable_prefix_caching is value


@pytest.mark.parametrize("raw, value", [("auto", None), ("None", None), (" AUTO ", None), ("2048", 2048)])
def test_optional_int(make_settings, raw: str, value: int | None) -> None:
    assert make_settings(DROPBATCH_MAX_MODEL_LEN=raw).engine.max_model_len == value
    assert make_settings(DROPBATCH_MAX_NUM_SEQS=raw).engine.max_num_seqs == value


def test_scalars_and_paths(make_settings) -> None:
    s = make_settings(
        DROPBATCH_GPU_MEMORY_UTILIZATION="0.5",
        DROPBATCH_CHUNK_LINES="7",
        DROPBATCH_HOME="/tmp/db-home",
        DROPBATCH_DEVICE="cpu",
        DROPBATCH_INTAKE="poll",
        DROPBATCH_POLL_SECONDS="0.25",
    )
    assert s.engine.gpu_memory_utilization == 0.5
    assert s.limits.chunk_lines == 7
    assert s.service.home == Path("/tmp/db-home")
    assert (s.engine.device, s.service.intake, s.service.poll_seconds) == ("cpu", "poll", 0.25)


def test_json_object(make_settings) -> None:
    spec = make_settings(DROPBATCH_SPECULATIVE_CONFIG='{"method": "ngram", "num_speculative_tokens": 3}')
    assert spec.engine.speculative_config == {"method": "ngram", "num_speculative_tokens": 3}


def test_tier_quotas_override_some_tiers(make_settings) -> None:
    s = make_settings(DROPBATCH_TIER_QUOTAS="free=5, gold = 7")
    assert s.limits.tier_quotas == {**DEFAULT_TIER_QUOTAS, "free": 5, "gold": 7}


def test_empty_value_means_default(make_settings) -> None:
    assert make_settings(DROPBATCH_CHUNK_LINES="", DROPBATCH_S3_ENDPOINT="") == Settings()


@pytest.mark.parametrize(
    "var, raw",
    [
        ("DROPBATCH_ENFORCE_EAGER", "maybe"),
        ("DROPBATCH_MAX_MODEL_LEN", "lots"),
        ("DROPBATCH_CHUNK_LINES", "1.5"),
        ("DROPBATCH_GPU_MEMORY_UTILIZATION", "most"),
        ("DROPBATCH_SPECULATIVE_CONFIG", "[1, 2]"),
        ("DROPBATCH_SPECULATIVE_CONFIG", "{not json"),
        ("DROPBATCH_TIER_QUOTAS", "free"),
        ("DROPBATCH_TIER_QUOTAS", "free=lots"),
        ("DROPBATCH_TIER_QUOTAS", "=5"),
        ("DROPBATCH_DEVICE", "tpu"),
        ("DROPBATCH_INTAKE", "carrier-pigeon"),
    ],
)
def test_bad_values_name_the_variable(make_settings, var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(**{var: raw})
    assert var in str(info.value)


def test_round_trip_defaults(make_settings) -> None:
    s = make_settings()
    assert Settings.from_env(s.to_env()) == s


def test_round_trip_everything_changed(make_settings) -> None:
    s = make_settings(
        DROPBATCH_S3_ENDPOINT="http://127.0.0.1:4566",
        DROPBATCH_REGION="eu-west-1",
        DROPBATCH_INBOX_BUCKET="in",
        DROPBATCH_QUEUE_URL="http://127.0.0.1:4566/000000000000/q",
        DROPBATCH_MODEL="Qwen/Qwen2.5-0.5B-Instruct",
        DROPBATCH_DEVICE="gpu",
        DROPBATCH_MAX_MODEL_LEN="4096",
        DROPBATCH_ENFORCE_EAGER="0",
        DROPBATCH_ENABLE_CHUNKED_PREFILL="1",
        DROPBATCH_ENABLE_PREFIX_CACHING="0",
        DROPBATCH_SPECULATIVE_CONFIG='{"method": "ngram", "nested": {"a": [1, 2]}}',
        DROPBATCH_KV_CACHE_DTYPE="fp8",
        DROPBATCH_MAX_NUM_SEQS="64",
        DROPBATCH_GPU_MEMORY_UTILIZATION="0.75",
        DROPBATCH_TIER_QUOTAS="free=1,gold=9",
        DROPBATCH_HOME="/var/lib/dropbatch",
        DROPBATCH_POLL_SECONDS="0.5",
        DROPBATCH_ADMIN_TOKEN="admin-secret",
        DROPBATCH_INTAKE="sqs",
    )
    assert Settings.from_env(s.to_env()) == s


def test_round_trip_keeps_explicit_none(make_settings) -> None:
    """``auto`` (None) for a field whose default is a number must survive to a child process."""
    s = make_settings(DROPBATCH_MAX_MODEL_LEN="auto")
    assert s.engine.max_model_len is None
    assert Settings.from_env(s.to_env()) == s


def test_aws_fallbacks(make_settings) -> None:
    s = make_settings(AWS_ENDPOINT_URL="http://localhost:9000", AWS_DEFAULT_REGION="ap-south-1")
    assert (s.storage.endpoint_url, s.storage.region) == ("http://localhost:9000", "ap-south-1")
    assert make_settings(AWS_REGION="eu-north-1").storage.region == "eu-north-1"
    assert make_settings(AWS_DEFAULT_REGION="a-1", AWS_REGION="b-2").storage.region == "a-1"
    preferred = make_settings(DROPBATCH_S3_ENDPOINT="http://a:1", AWS_ENDPOINT_URL="http://b:2", DROPBATCH_REGION="r", AWS_DEFAULT_REGION="x")
    assert (preferred.storage.endpoint_url, preferred.storage.region) == ("http://a:1", "r")
    assert make_settings(RAY_ADDRESS="ray://head:10001").engine.ray_address == "ray://head:10001"


def test_local_endpoint_defaults_credentials(make_settings) -> None:
    local = make_settings(DROPBATCH_S3_ENDPOINT="http://127.0.0.1:4566")
    assert (local.storage.access_key_id, local.storage.secret_access_key) == ("test", "test")
    explicit = make_settings(AWS_ENDPOINT_URL="http://127.0.0.1:4566", AWS_ACCESS_KEY_ID="AK", AWS_SECRET_ACCESS_KEY="SK")
    assert (explicit.storage.access_key_id, explicit.storage.secret_access_key) == ("AK", "SK")
    real_aws = make_settings()
    assert real_aws.storage.access_key_id is None  # boto3's own credential chain


def test_with_endpoint(make_settings) -> None:
    s = make_settings(DROPBATCH_CHUNK_LINES="9").with_endpoint("http://127.0.0.1:5000")
    assert s.storage.endpoint_url == "http://127.0.0.1:5000"
    assert (s.storage.access_key_id, s.storage.secret_access_key) == ("test", "test")
    assert s.limits.chunk_lines == 9


def test_settings_are_frozen(make_settings) -> None:
    s = make_settings()
    with pytest.raises(ValueError):
        s.limits.chunk_lines = 3  # type: ignore[misc]


@pytest.mark.parametrize("raw", ["", "none", "off"])
def test_tool_calling_can_be_turned_off_and_stays_off_in_a_child(make_settings, raw: str) -> None:
    s = make_settings(DROPBATCH_TOOL_CALL_PARSER=raw)
    assert s.engine.tool_call_parser is None
    assert Settings.from_env(s.to_env()) == s
    assert make_settings().engine.tool_call_parser == "hermes"


def test_several_models_first_is_the_default_and_round_trips(make_settings) -> None:
    s = make_settings(DROPBATCH_MODELS="chat=/m/chat, embed = Qwen/Qwen3-Embedding-0.6B")
    assert s.engine.served == {"chat": "/m/chat", "embed": "Qwen/Qwen3-Embedding-0.6B"}
    assert (s.engine.model_name, s.engine.model) == ("chat", "/m/chat")
    assert s.engine.for_model("embed").model == "Qwen/Qwen3-Embedding-0.6B"
    assert s.engine.for_model("embed").served == {"embed": "Qwen/Qwen3-Embedding-0.6B"}
    assert Settings.from_env(s.to_env()) == s
    assert make_settings().engine.served == {"dropbatch-tiny": ".dropbatch/models/dropbatch-tiny"}


@pytest.mark.parametrize(
    "env",
    [
        {"DROPBATCH_MODELS": "chat"},
        {"DROPBATCH_MODELS": "a=/x,a=/y"},
        {"DROPBATCH_MODELS": "a=/x", "DROPBATCH_MODEL_NAME": "b"},
        {"DROPBATCH_MODELS": "a=/x", "DROPBATCH_MODEL": "/y"},
    ],
)
def test_bad_model_lists_name_the_variable(make_settings, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(**env)
    assert "DROPBATCH_MODEL" in str(info.value)
