"""Settings: one frozen value object, built once from an injected environment mapping.

``Settings.from_env(os.environ)`` at an entrypoint is the only place the process
environment is read; everything below receives the object (or one of its groups).
Every ``DROPBATCH_*`` variable is listed in ``ENV_VARS`` so the README and
``dropbatch config`` print the same table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dropbatch.errors import ConfigError

DEFAULT_TIER_QUOTAS = {"free": 100, "basic": 500, "premium": 2000, "enterprise": 10000}
DEFAULT_COMPLETION_WINDOWS = {"24h": 86_400, "1h": 3_600}
DEFAULT_TIER_WEIGHTS = {"free": 1.0, "basic": 2.0, "premium": 4.0, "enterprise": 8.0}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageSettings(_Frozen):
    """Where the three buckets and the intake queue live."""

    endpoint_url: str | None = Field(
        None,
        description="S3/SQS endpoint (moto, LocalStack). Unset means real AWS; "
        "`dropbatch up` then starts an embedded moto server on 127.0.0.1:4566.",
    )
    region: str = Field("us-east-1", description="AWS region of the buckets and the queue.")
    access_key_id: str | None = Field(
        None, description="S3/SQS access key; unset uses boto3's credential chain ('test' with a local endpoint)."
    )
    secret_access_key: str | None = Field(None, description="S3/SQS secret key (never printed).")
    inbox_bucket: str = Field(
        "dropbatch-inbox", description="Where clients drop <tenant>/<job>/*.jsonl and manifest.json."
    )
    outbox_bucket: str = Field(
        "dropbatch-outbox",
        description="Where results appear: <tenant>/<sha256>/output.jsonl, errors.jsonl, summary.json.",
    )
    control_bucket: str = Field(
        "dropbatch-control",
        description="Service-only state: batch records, keys, quota ledger, queue, leases, audit log.",
    )
    queue_name: str = Field(
        "dropbatch-intake",
        description="SQS queue that receives the inbox's manifest.json events.",
    )
    queue_url: str | None = Field(
        None, description="Explicit queue URL (e.g. from Terraform outputs); else looked up by name."
    )
    max_attempts: int = Field(
        8, description="botocore retry attempts for throttling, 5xx and connection errors."
    )


class EngineSettings(_Frozen):
    """The inference engine: which model, and how vLLM is asked to run it."""

    model: str = Field(
        ".dropbatch/models/dropbatch-tiny",
        description="Weights: a local path or a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct).",
    )
    model_name: str = Field(
        "dropbatch-tiny", description="The name clients put in body.model and --model."
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Several served models, name=weights,name2=weights2 (local path or hub id), each on its "
        "own warm engine; the first is the default (and sets DROPBATCH_MODEL/DROPBATCH_MODEL_NAME). "
        "Unset serves DROPBATCH_MODEL alone.",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto picks gpu when Ray sees one, else vLLM's CPU build."
    )
    dtype: str = Field("bfloat16", description="Weights/activation dtype for vLLM.")
    max_model_len: int | None = Field(
        512, description="Context length; prompts longer than this become error lines."
    )
    enforce_eager: bool = Field(
        True, description="Skip torch.compile/CUDA graphs: ~17 s vs ~49 s engine load on CPU."
    )
    enable_chunked_prefill: bool | None = Field(
        None, description="Interleave long prefills with decodes; better latency under mixed load."
    )
    enable_prefix_caching: bool | None = Field(
        True,
        description="Reuse KV cache across prompts sharing a prefix (system prompts, few-shot blocks); the "
        "runner feeds lines sharing a prefix together. Off only to measure without it; 'auto' leaves vLLM's default.",
    )
    order_by_prefix: bool = Field(
        True,
        description="Send each chunk's lines to vLLM sorted by their prompt, so lines sharing a prefix run "
        "together; off only to measure the gain.",
    )
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="vLLM's scheduler order. 'priority': the runner stamps each request (deadline at risk "
        "first, else fair share by tier weight); 'fcfs': first come, first served (one tenant's big batch "
        "delays every other tenant's lines).",
    )
    speculative_config: dict[str, Any] | None = Field(
        None, description="vLLM speculative decoding config (JSON), e.g. a draft model or ngram."
    )
    kv_cache_dtype: str | None = Field(
        None, description="'fp8' halves KV-cache memory on GPUs that support it."
    )
    tensor_parallel_size: int = Field(1, description="Shard each layer across this many GPUs.")
    pipeline_parallel_size: int = Field(1, description="Split the layers across this many GPUs/nodes.")
    max_num_seqs: int | None = Field(
        None, description="Sequences scheduled at once; the planner derives it if unset."
    )
    max_num_batched_tokens: int | None = Field(
        None, description="Token budget per engine step; the planner derives it if unset."
    )
    gpu_memory_utilization: float = Field(
        0.9, description="Fraction of GPU memory vLLM may take for weights + KV cache."
    )
    cpu_kvcache_gib: int = Field(
        1, ge=1, description="KV cache GiB on the CPU build (VLLM_CPU_KVCACHE_SPACE); unset makes start-up flaky."
    )
    batch_size: int | None = Field(
        None, description="Rows per call into the engine actor; unset sends a whole chunk at once."
    )
    replicas: int = Field(
        1,
        ge=1,
        description="Warm engine replicas per model and task, the least kept up (data parallel; one per GPU "
        "in production).",
    )
    replicas_max: int | None = Field(
        None,
        ge=1,
        description="Most engine replicas per model: more start while queued work exceeds "
        "DROPBATCH_ENGINE_SCALE_LINES per replica (unset: DROPBATCH_ENGINE_REPLICAS, no scaling).",
    )
    scale_lines: int = Field(
        20_000, ge=1, description="Queued request lines per engine replica before another replica starts."
    )
    scale_down_seconds: float = Field(
        300.0, gt=0, description="A replica above the least is stopped after the queue needed it not for this long."
    )
    stall_seconds: float = Field(
        300.0,
        gt=0,
        description="An engine with requests in flight that finishes none for this long is restarted "
        "and its requests retried.",
    )
    request_timeout_seconds: float = Field(
        600.0, gt=0, description="One request longer than this in the engine becomes a retryable error line."
    )
    default_max_tokens: int = Field(
        256, description="max_tokens for a chat or Responses line that sets none (OpenAI's would run to the "
        "context's end); completions lines default to 16, as OpenAI's do."
    )
    structured_outputs_config: dict[str, Any] | None = Field(
        {"backend": "xgrammar", "disable_any_whitespace": True},
        description="vLLM's --structured-outputs-config (JSON). Whitespace-free grammars keep weak or "
        "random-weight models from padding JSON with spaces until max_tokens; the backend must be "
        "explicit for that (xgrammar or guidance).",
    )
    tool_call_parser: str | None = Field(
        "hermes",
        description="vLLM's tool-call parser for the served models' chat template (hermes reads Qwen2.5's "
        "<tool_call> JSON); 'none' or empty turns tool calling off, and then tools are refused at admission.",
    )
    ray_address: str | None = Field(
        None, description="Attach to a Ray cluster (RAY_ADDRESS); unset starts Ray locally."
    )
    ray_num_cpus: int | None = Field(
        None,
        description="Logical CPUs for a local Ray; more than the cores so small stages never "
        "deadlock on a 2-core machine.",
    )


    @model_validator(mode="before")
    @classmethod
    def _first_model_is_the_default(cls, data: Any) -> Any:
        models = data.get("models") if isinstance(data, dict) else None
        if models:
            name, path = next(iter(models.items()))
            for field, var, value in (("model_name", "DROPBATCH_MODEL_NAME", name), ("model", "DROPBATCH_MODEL", path)):
                if data.get(field, value) != value:
                    raise ValueError(f"{var}={data[field]!r} is not the first of DROPBATCH_MODELS ({value!r})")
            data = {**data, "model_name": name, "model": path}
        return data

    @model_validator(mode="after")
    def _replica_range(self) -> EngineSettings:
        if self.replicas_max is not None and self.replicas_max < self.replicas:
            raise ValueError(
                f"DROPBATCH_ENGINE_REPLICAS_MAX={self.replicas_max} is below DROPBATCH_ENGINE_REPLICAS={self.replicas}"
            )
        return self

    @property
    def most_replicas(self) -> int:
        return self.replicas_max or self.replicas

    @property
    def served(self) -> dict[str, str]:
        """Served model name → weights, the default first."""
        return dict(self.models) if self.models else {self.model_name: self.model}

    def for_model(self, name: str) -> EngineSettings:
        """These settings with ``name`` as the model (one engine's view)."""
        if name not in self.served:
            raise ConfigError(f"{name!r} is not a served model (DROPBATCH_MODELS)")
        return self.model_copy(update={"model_name": name, "model": self.served[name], "models": {}})


class LimitSettings(_Frozen):
    """What one batch may be, and how it is cut into work."""

    max_file_lines: int = Field(50_000, description="Most request lines one batch may hold (OpenAI: 50,000).")
    max_file_bytes: int = Field(
        200 * 1024 * 1024, description="Largest total input size of one batch (OpenAI: 200 MB)."
    )
    max_line_bytes: int = Field(
        4 * 1024 * 1024, description="A longer line is rejected without being held in memory."
    )
    completion_windows: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_COMPLETION_WINDOWS),
        description="Seconds of each completion_window a batch may ask for ('24h' is OpenAI's, '1h' the "
        "priority window); tests shorten them to seconds.",
    )
    priority_window_tiers: tuple[str, ...] = Field(
        ("premium", "enterprise"), description="Tiers whose batches may ask for the '1h' completion window."
    )
    sla_admission: Literal["reject", "warn", "off"] = Field(
        "reject",
        description="A batch projected (recent throughput, queued work ahead) to miss its window: reject it "
        "(deadline_unreachable), admit it with a warning in its record, or do not project.",
    )
    throughput_max_age_seconds: int = Field(
        300, description="A runner throughput sample older than this is not used to project (runner idle or gone)."
    )
    dedup: bool = Field(
        True, description="Compute identical deterministic requests of a batch once and copy the result."
    )
    chunk_lines: int = Field(
        500, description="Lines per chunk: the unit of streaming, checkpointing and progress."
    )
    coalesce_max_lines: int = Field(
        50_000, description="Queued batches are run together in one pipeline up to this many lines."
    )
    tier_quotas: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_TIER_QUOTAS),
        description="Request lines per rolling hour, by tier.",
    )
    tier_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_TIER_WEIGHTS),
        description="Engine share by tier while tenants compete: a tier of weight 4 gets 4 requests served "
        "for each one of a tier of weight 1 (an unlisted tier weighs 1).",
    )
    deadline_margin_seconds: float = Field(
        600.0,
        ge=0,
        description="A batch whose projected finish (its lines left at the measured throughput) is within "
        "this long of its deadline is at risk: its requests go before every fair-share request.",
    )
    small_batch_lines: int = Field(
        2_000,
        ge=1,
        description="The last free group slot of a runner only takes batches of at most this many lines, so a "
        "small job starts at once even while big ones fill the other slots.",
    )


class RetrySettings(_Frozen):
    """The default retry policy for request lines the engine fails (a batch may set its own)."""

    max_retries: int = Field(3, ge=0, le=10, description="Retries of a line the engine failed server-side.")
    retry_delay: float = Field(1.0, ge=0, description="Seconds before the first retry.")
    backoff_factor: float = Field(2.0, ge=1, description="Each further retry waits this many times longer.")


class ServiceSettings(_Frozen):
    """How the services run: addresses, cadence, leases."""

    home: Path = Field(Path(".dropbatch"), description="Local state: built model, logs.")
    gateway_host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    gateway_port: int = Field(8000, description="Port the gateway listens on (/v1, /health, /ready, /metrics).")
    gateway_workers: int = Field(
        1,
        ge=1,
        description="Gateway worker processes sharing the port; rate limits are per process, so each allows its own.",
    )
    gateway_s3_pool: int = Field(
        64,
        ge=1,
        description=(
            "S3 connections each gateway process keeps, for its signed reads and again for its aiobotocore "
            "client; also how many record reads one page makes at once."
        ),
    )
    gateway_page_cache_seconds: float = Field(
        1.0,
        ge=0,
        description=(
            "How old a gateway list page may be: the keys it listed and the batches on it that can still change "
            "are kept this long (re-read in the background at half of it); finished batches and files are kept, "
            "and a retrieve always reads what can change. 0: no cache, every page LISTs and reads every record."
        ),
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the watcher's and runner's /metrics, /health, /ready bind to."
    )
    watcher_port: int = Field(9101, description="The watcher's /metrics, /health and /ready port.")
    runner_port: int = Field(9102, description="The runner's /metrics, /health and /ready port.")
    intake: Literal["auto", "sqs", "poll"] = Field(
        "auto", description="auto: SQS events when the queue exists, plus a slower listing sweep."
    )
    poll_seconds: float = Field(2.0, description="How often the watcher lists the inbox (or long-polls SQS).")
    runner_poll_seconds: float = Field(
        0.5, gt=0,
        description="How often a runner with a free slot lists the work queue (a LIST, and a GET per queued "
        "entry): the longest a newly queued batch waits to be claimed. A group that ends wakes it at once.",
    )
    watcher_workers: int = Field(
        4, ge=1,
        description="Manifests one watcher admits at once (a burst of uploads is not admitted one after another).",
    )
    max_running_groups: int = Field(
        4, ge=1, description="Groups of batches one runner streams into its warm engine at once."
    )
    stop_seconds: float = Field(
        8.0, gt=0, description="How long a stopping runner waits for its groups to checkpoint and hand back."
    )
    sweep_seconds: float = Field(
        30.0, description="With SQS intake, a full inbox listing this often catches lost events."
    )
    lease_seconds: int = Field(
        60, description="A runner that stops renewing loses its batch after this long."
    )
    admin_token: str | None = Field(None, description="Bearer token for /admin routes.")
    log_level: str = Field("INFO", description="Log level of every service (JSON logs on stderr).")


class Settings(_Frozen):
    """Everything dropbatch is configured by."""

    storage: StorageSettings = StorageSettings()
    engine: EngineSettings = EngineSettings()
    limits: LimitSettings = LimitSettings()
    retry: RetrySettings = RetrySettings()
    service: ServiceSettings = ServiceSettings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``environ`` (pass ``os.environ`` at an entrypoint, a dict in tests)."""
        groups: dict[str, dict[str, Any]] = {"storage": {}, "engine": {}, "limits": {}, "retry": {}, "service": {}}
        for var, (group, field, parse, fallbacks) in ENV_VARS.items():
            raw = environ.get(var)
            for fallback in fallbacks:
                if raw is None:
                    raw = environ.get(fallback)
            if raw is None or (raw == "" and parse is not _optional_name):
                continue
            try:
                groups[group][field] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc
        storage = groups["storage"]
        if storage.get("endpoint_url") and "access_key_id" not in storage:
            # Local emulators accept any credentials; real AWS uses boto3's own chain.
            storage.setdefault("access_key_id", "test")
            storage.setdefault("secret_access_key", "test")
        built = {}
        for name, values in groups.items():
            try:
                built[name] = _GROUP_TYPES[name](**values)
            except ValidationError as exc:
                first = exc.errors()[0]
                if not first.get("loc"):  # a rule across fields: its message names the variables
                    raise ConfigError(f"The {name} settings are not valid: {first['msg']}") from exc
                field = str(first["loc"][0])
                var = next((v for v, (g, f, _, _) in ENV_VARS.items() if (g, f) == (name, field)), f"{name}.{field}")
                raise ConfigError(f"{var}={values.get(field)!r} is not valid: {first['msg']}") from exc
        return cls(**built)

    def with_endpoint(self, endpoint_url: str) -> Settings:
        """A copy pointing at ``endpoint_url`` (used by `dropbatch up` for its embedded server)."""
        storage = self.storage.model_copy(
            update={
                "endpoint_url": endpoint_url,
                "access_key_id": self.storage.access_key_id or "test",
                "secret_access_key": self.storage.secret_access_key or "test",
            }
        )
        return self.model_copy(update={"storage": storage})

    def to_env(self) -> dict[str, str]:
        """The ``DROPBATCH_*`` variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for var, (group, field, parse, _fallbacks) in ENV_VARS.items():
            value = getattr(getattr(self, group), field)
            if value is None:
                if parse in (_optional_int, _optional_bool):
                    env[var] = "auto"
                elif parse is _optional_name:
                    env[var] = "none"
                continue
            if isinstance(value, bool):
                env[var] = "1" if value else "0"
            elif isinstance(value, dict):
                if not value and field == "models":
                    continue
                pairs = field in ("tier_quotas", "tier_weights", "models", "completion_windows")
                env[var] = ",".join(f"{k}={_plain(v)}" for k, v in value.items()) if pairs else json.dumps(value)
            elif isinstance(value, tuple):
                env[var] = ",".join(value)
            else:
                env[var] = str(value)
        return env


_GROUP_TYPES = {
    "storage": StorageSettings,
    "engine": EngineSettings,
    "limits": LimitSettings,
    "retry": RetrySettings,
    "service": ServiceSettings,
}


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true/false")


def _optional_bool(raw: str) -> bool | None:
    return None if raw.strip().lower() == "auto" else _bool(raw)


def _optional_int(raw: str) -> int | None:
    return None if raw.strip().lower() in {"none", "auto"} else int(raw)


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _optional_name(raw: str) -> str | None:
    return None if raw.strip().lower() in {"", "none", "off"} else raw.strip()


def _models(raw: str) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in raw.split(","):
        name, _, path = item.partition("=")
        if not name.strip() or not path.strip():
            raise ValueError("expected name=path_or_hub_id,name2=...")
        if name.strip() in models:
            raise ValueError(f"the model name {name.strip()!r} appears twice")
        models[name.strip()] = path.strip()
    return models


def _per_tier(raw: str, defaults: Mapping[str, Any], convert: Any) -> dict[str, Any]:
    """``tier=value,tier=value`` over ``defaults`` (a tier not named keeps its default)."""
    values = dict(defaults)
    for item in raw.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip():
            raise ValueError("expected tier=value,tier=value")
        values[name.strip()] = convert(value)
    return values


def _weights(raw: str) -> dict[str, float]:
    weights = _per_tier(raw, DEFAULT_TIER_WEIGHTS, float)
    for name, weight in weights.items():
        if weight <= 0:
            raise ValueError(f"the weight of {name!r} must be positive")
    return weights


def _quotas(raw: str) -> dict[str, int]:
    return _per_tier(raw, DEFAULT_TIER_QUOTAS, int)


def _windows(raw: str) -> dict[str, int]:
    windows = _per_tier(raw, DEFAULT_COMPLETION_WINDOWS, int)
    if set(windows) != set(DEFAULT_COMPLETION_WINDOWS):
        raise ValueError(f"expected window=seconds with a window of {', '.join(DEFAULT_COMPLETION_WINDOWS)}")
    return windows


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


# variable: (group, field, parser, fallback variables read when the first is unset)
ENV_VARS: dict[str, tuple[str, str, Any, tuple[str, ...]]] = {
    "DROPBATCH_S3_ENDPOINT": ("storage", "endpoint_url", str, ("AWS_ENDPOINT_URL",)),
    "DROPBATCH_REGION": ("storage", "region", str, ("AWS_DEFAULT_REGION", "AWS_REGION")),
    "DROPBATCH_ACCESS_KEY_ID": ("storage", "access_key_id", str, ("AWS_ACCESS_KEY_ID",)),
    "DROPBATCH_SECRET_ACCESS_KEY": ("storage", "secret_access_key", str, ("AWS_SECRET_ACCESS_KEY",)),
    "DROPBATCH_INBOX_BUCKET": ("storage", "inbox_bucket", str, ()),
    "DROPBATCH_OUTBOX_BUCKET": ("storage", "outbox_bucket", str, ()),
    "DROPBATCH_CONTROL_BUCKET": ("storage", "control_bucket", str, ()),
    "DROPBATCH_QUEUE_NAME": ("storage", "queue_name", str, ()),
    "DROPBATCH_QUEUE_URL": ("storage", "queue_url", str, ()),
    "DROPBATCH_S3_MAX_ATTEMPTS": ("storage", "max_attempts", int, ()),
    "DROPBATCH_MODEL": ("engine", "model", str, ()),
    "DROPBATCH_MODEL_NAME": ("engine", "model_name", str, ()),
    "DROPBATCH_MODELS": ("engine", "models", _models, ()),
    "DROPBATCH_DEVICE": ("engine", "device", str, ()),
    "DROPBATCH_DTYPE": ("engine", "dtype", str, ()),
    "DROPBATCH_MAX_MODEL_LEN": ("engine", "max_model_len", _optional_int, ()),
    "DROPBATCH_ENFORCE_EAGER": ("engine", "enforce_eager", _bool, ()),
    "DROPBATCH_ENABLE_CHUNKED_PREFILL": ("engine", "enable_chunked_prefill", _bool, ()),
    "DROPBATCH_ENABLE_PREFIX_CACHING": ("engine", "enable_prefix_caching", _optional_bool, ()),
    "DROPBATCH_SCHEDULING_POLICY": ("engine", "scheduling_policy", str, ()),
    "DROPBATCH_ORDER_BY_PREFIX": ("engine", "order_by_prefix", _bool, ()),
    "DROPBATCH_SPECULATIVE_CONFIG": ("engine", "speculative_config", _json_object, ()),
    "DROPBATCH_KV_CACHE_DTYPE": ("engine", "kv_cache_dtype", str, ()),
    "DROPBATCH_TENSOR_PARALLEL_SIZE": ("engine", "tensor_parallel_size", int, ()),
    "DROPBATCH_PIPELINE_PARALLEL_SIZE": ("engine", "pipeline_parallel_size", int, ()),
    "DROPBATCH_MAX_NUM_SEQS": ("engine", "max_num_seqs", _optional_int, ()),
    "DROPBATCH_MAX_NUM_BATCHED_TOKENS": ("engine", "max_num_batched_tokens", _optional_int, ()),
    "DROPBATCH_GPU_MEMORY_UTILIZATION": ("engine", "gpu_memory_utilization", float, ()),
    "DROPBATCH_CPU_KVCACHE_GIB": ("engine", "cpu_kvcache_gib", int, ()),
    "DROPBATCH_ENGINE_BATCH_SIZE": ("engine", "batch_size", _optional_int, ()),
    "DROPBATCH_ENGINE_REPLICAS": ("engine", "replicas", int, ()),
    "DROPBATCH_ENGINE_REPLICAS_MAX": ("engine", "replicas_max", _optional_int, ()),
    "DROPBATCH_ENGINE_SCALE_LINES": ("engine", "scale_lines", int, ()),
    "DROPBATCH_ENGINE_SCALE_DOWN_SECONDS": ("engine", "scale_down_seconds", float, ()),
    "DROPBATCH_ENGINE_STALL_SECONDS": ("engine", "stall_seconds", float, ()),
    "DROPBATCH_ENGINE_REQUEST_TIMEOUT": ("engine", "request_timeout_seconds", float, ()),
    "DROPBATCH_DEFAULT_MAX_TOKENS": ("engine", "default_max_tokens", int, ()),
    "DROPBATCH_STRUCTURED_OUTPUTS_CONFIG": ("engine", "structured_outputs_config", _json_object, ()),
    "DROPBATCH_TOOL_CALL_PARSER": ("engine", "tool_call_parser", _optional_name, ()),
    "DROPBATCH_RAY_ADDRESS": ("engine", "ray_address", str, ("RAY_ADDRESS",)),
    "DROPBATCH_RAY_NUM_CPUS": ("engine", "ray_num_cpus", _optional_int, ()),
    "DROPBATCH_MAX_FILE_LINES": ("limits", "max_file_lines", int, ()),
    "DROPBATCH_MAX_FILE_BYTES": ("limits", "max_file_bytes", int, ()),
    "DROPBATCH_MAX_LINE_BYTES": ("limits", "max_line_bytes", int, ()),
    "DROPBATCH_COMPLETION_WINDOWS": ("limits", "completion_windows", _windows, ()),
    "DROPBATCH_PRIORITY_WINDOW_TIERS": ("limits", "priority_window_tiers", _names, ()),
    "DROPBATCH_SLA_ADMISSION": ("limits", "sla_admission", str, ()),
    "DROPBATCH_THROUGHPUT_MAX_AGE_SECONDS": ("limits", "throughput_max_age_seconds", int, ()),
    "DROPBATCH_DEDUP": ("limits", "dedup", _bool, ()),
    "DROPBATCH_CHUNK_LINES": ("limits", "chunk_lines", int, ()),
    "DROPBATCH_COALESCE_MAX_LINES": ("limits", "coalesce_max_lines", int, ()),
    "DROPBATCH_TIER_QUOTAS": ("limits", "tier_quotas", _quotas, ()),
    "DROPBATCH_TIER_WEIGHTS": ("limits", "tier_weights", _weights, ()),
    "DROPBATCH_DEADLINE_MARGIN_SECONDS": ("limits", "deadline_margin_seconds", float, ()),
    "DROPBATCH_SMALL_BATCH_LINES": ("limits", "small_batch_lines", int, ()),
    "DROPBATCH_MAX_RETRIES": ("retry", "max_retries", int, ()),
    "DROPBATCH_RETRY_DELAY": ("retry", "retry_delay", float, ()),
    "DROPBATCH_BACKOFF_FACTOR": ("retry", "backoff_factor", float, ()),
    "DROPBATCH_HOME": ("service", "home", Path, ()),
    "DROPBATCH_GATEWAY_HOST": ("service", "gateway_host", str, ()),
    "DROPBATCH_GATEWAY_PORT": ("service", "gateway_port", int, ()),
    "DROPBATCH_GATEWAY_WORKERS": ("service", "gateway_workers", int, ()),
    "DROPBATCH_GATEWAY_S3_POOL": ("service", "gateway_s3_pool", int, ()),
    "DROPBATCH_GATEWAY_PAGE_CACHE_SECONDS": ("service", "gateway_page_cache_seconds", float, ()),
    "DROPBATCH_METRICS_HOST": ("service", "metrics_host", str, ()),
    "DROPBATCH_WATCHER_PORT": ("service", "watcher_port", int, ()),
    "DROPBATCH_RUNNER_PORT": ("service", "runner_port", int, ()),
    "DROPBATCH_INTAKE": ("service", "intake", str, ()),
    "DROPBATCH_POLL_SECONDS": ("service", "poll_seconds", float, ()),
    "DROPBATCH_RUNNER_POLL_SECONDS": ("service", "runner_poll_seconds", float, ()),
    "DROPBATCH_RUNNER_GROUPS": ("service", "max_running_groups", int, ()),
    "DROPBATCH_WATCHER_WORKERS": ("service", "watcher_workers", int, ()),
    "DROPBATCH_SWEEP_SECONDS": ("service", "sweep_seconds", float, ()),
    "DROPBATCH_LEASE_SECONDS": ("service", "lease_seconds", int, ()),
    "DROPBATCH_ADMIN_TOKEN": ("service", "admin_token", str, ()),
    "DROPBATCH_LOG_LEVEL": ("service", "log_level", str, ()),
}
