"""`dropbatch up | bootstrap | watcher | runner | gateway`: running the services."""

from __future__ import annotations

import click

from dropbatch.cli.common import Command, State, emit, s3_uri, stop_on_signals
from dropbatch.errors import ConfigError
from dropbatch.observability.health import buckets_check, observed
from dropbatch.observability.logging import configure_logging


@click.command("bootstrap", cls=Command)
@click.pass_obj
def bootstrap_command(state: State, as_json: bool) -> None:
    """Create the buckets, the intake queue and the inbox notification (idempotent)."""
    from dropbatch.bootstrap import bootstrap

    settings = state.settings
    configure_logging("bootstrap", settings.service.log_level)
    resources = bootstrap(settings.storage)
    payload = {
        "endpoint": settings.storage.endpoint_url,
        "buckets": {
            "inbox": settings.storage.inbox_bucket,
            "outbox": settings.storage.outbox_bucket,
            "control": settings.storage.control_bucket,
        },
        "queue_url": resources.queue_url,
        "dead_letter_queue_url": resources.dead_letter_queue_url,
    }
    lines = [f"bootstrapped {settings.storage.endpoint_url or 'AWS'}"]
    lines += [f"  {name:<8} {s3_uri(bucket)}" for name, bucket in payload["buckets"].items()]
    lines += [f"  queue    {resources.queue_url}", f"  dlq      {resources.dead_letter_queue_url}"]
    emit(as_json, payload, "\n".join(lines))


@click.command("watcher", cls=Command)
@click.pass_obj
def watcher_command(state: State, as_json: bool) -> None:
    """Admit drop-box jobs: verify manifests, validate input, queue batches (runs until stopped)."""
    from dropbatch.queues import SqsEventQueue, find_queue_url
    from watcher.service import Watcher

    settings = state.settings
    configure_logging("watcher", settings.service.log_level)
    stop = stop_on_signals()
    ctx = state.context
    queue_url = None
    if settings.service.intake != "poll":
        queue_url = find_queue_url(settings.storage)
        if queue_url is None and settings.service.intake == "sqs":
            raise ConfigError(
                f"DROPBATCH_INTAKE=sqs but the queue {settings.storage.queue_name!r} does not exist "
                "(run `dropbatch bootstrap`, or set DROPBATCH_QUEUE_URL)."
            )
    events = SqsEventQueue(settings.storage, queue_url) if queue_url else None
    checks = {"s3": buckets_check(ctx.store, {"inbox": ctx.inbox, "control": settings.storage.control_bucket})}
    if events is not None:
        checks["queue"] = events.check
    service = settings.service
    with observed("watcher", service.metrics_host, service.watcher_port, checks) as (metrics, _, port):
        intake = "sqs" if events else "poll"
        emit(as_json, {"service": "watcher", "intake": intake, "queue_url": queue_url, "metrics_port": port}, None)
        Watcher(ctx, events=events, metrics=metrics).run(stop)


@click.command("runner", cls=Command)
@click.pass_obj
def runner_command(state: State, as_json: bool) -> None:
    """Run queued batches through the warm engine (vLLM actors fed by Ray Data; runs until stopped)."""
    from runner.arenas import cap_malloc_arenas

    cap_malloc_arenas()  # first, before Ray's threads: the driver's RSS crept with every job without it
    settings = state.settings
    configure_logging("runner", settings.service.log_level)
    stop = stop_on_signals()
    # Imported here: `dropbatch --help` and the client commands never load ray or vllm.
    from runner.engine import build_engine
    from runner.service import Runner

    ctx = state.context
    engine = build_engine(settings)
    checks = {
        "s3": buckets_check(
            ctx.store, {"inbox": ctx.inbox, "outbox": ctx.outbox, "control": settings.storage.control_bucket}
        ),
        "engine": engine.problem,
    }
    service = settings.service
    with observed("runner", service.metrics_host, service.runner_port, checks) as (metrics, health, port):
        engine.on_restart = lambda reason: metrics.engine_restarts.inc()
        emit(
            as_json,
            {"service": "runner", "model": settings.engine.model, "model_name": settings.engine.model_name,
             "metrics_port": port},
            None,
        )
        with engine as running:
            stop_on_signals(stop)  # starting the engine ran ray.init, which took over SIGTERM
            health.add("ray", ray_check)
            Runner(ctx, running, metrics=metrics).run(stop)


@click.command("gateway", cls=Command)
@click.pass_obj
def gateway_command(state: State, as_json: bool) -> None:
    """Serve the HTTP gateway (runs until stopped)."""
    from gateway.app import serve

    settings = state.settings
    configure_logging("gateway", settings.service.log_level)
    url = f"http://{settings.service.gateway_host}:{settings.service.gateway_port}"
    emit(as_json, {"service": "gateway", "url": url}, None)
    serve(settings)


@click.command("up", cls=Command)
@click.pass_obj
def up_command(state: State, as_json: bool) -> None:
    """Run the whole local stack in the foreground; Ctrl-C stops it.

    Starts an embedded moto S3/SQS server on 127.0.0.1:4566 unless DROPBATCH_S3_ENDPOINT
    (or AWS_ENDPOINT_URL) is set, builds the tiny model if it is the configured one,
    bootstraps buckets and queue, then runs watcher, runner and gateway as child
    processes. Writes <DROPBATCH_HOME>/up.json once they are started.
    """
    from dropbatch.cli.stack import run_stack

    settings = state.settings
    configure_logging("up", settings.service.log_level)
    code = run_stack(settings, state.environ, stop_on_signals(), as_json=as_json)
    if code:
        raise click.exceptions.Exit(code)


def ray_check() -> str | None:
    """The runner's Ray session is up (a lost cluster makes the runner unready)."""
    import ray

    return None if ray.is_initialized() else "Ray is not initialized"


COMMANDS = (up_command, bootstrap_command, watcher_command, runner_command, gateway_command)
