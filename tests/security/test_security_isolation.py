"""The cross-tenant matrix under concurrency: tenants A and B hammer each other's ids, and only ever see 404.

A live gateway (uvicorn on loopback) over the moto server. Each tenant owns an
uploaded file, a completed batch with its output file, and a batch still
validating. Then THREADS threads per tenant fire every cross-tenant request at
once, interleaved with their own reads: retrieve, content, delete, cancel,
results, a batch from the other's file, list cursors past the other's ids. Every
cross request answers 404 with OpenAI's error shape and nothing of the other
tenant; every own request still succeeds; afterwards the other tenant's objects
are all there, unchanged.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dropbatch.engine.echo import EchoEngine
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

THREADS = 4  # per tenant
ROUNDS = 3  # each thread sends the whole cross-tenant matrix this many times
LINE = {
    "custom_id": "{tenant}-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "dropbatch-tiny", "messages": [{"role": "user", "content": "secret words of {tenant}"}]},
}


def _jsonl(tenant: str) -> bytes:
    return json.dumps(LINE).replace("{tenant}", tenant).encode() + b"\n"


def _own_objects(http: httpx.Client, token: str, tenant: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {token}"}
    file_id = http.post(
        "/v1/files", headers=auth, files={"file": (f"{tenant}.jsonl", _jsonl(tenant))}, data={"purpose": "batch"}
    ).json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    done = http.post("/v1/batches", headers=auth, json=body).json()["id"]
    return {"file": file_id, "batch": done}


def _matrix(ids: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    """(method, path, json body) of every request that names another tenant's objects."""
    return [
        ("GET", f"/v1/files/{ids['file']}", None),
        ("GET", f"/v1/files/{ids['file']}/content", None),
        ("GET", f"/v1/files/{ids['output']}", None),
        ("GET", f"/v1/files/{ids['output']}/content", None),
        ("DELETE", f"/v1/files/{ids['file']}", None),
        ("DELETE", f"/v1/files/{ids['output']}", None),
        ("GET", f"/v1/batches/{ids['batch']}", None),
        ("GET", f"/v1/batches/{ids['pending']}", None),
        ("GET", f"/v1/batches/{ids['batch']}/results", None),
        ("POST", f"/v1/batches/{ids['pending']}/cancel", None),
        ("POST", f"/v1/batches/{ids['batch']}/cancel", None),
        (
            "POST",
            "/v1/batches",
            {"input_file_id": ids["file"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        ),
        ("GET", f"/v1/batches?after={ids['batch']}", None),
        ("GET", f"/v1/files?after={ids['file']}", None),
    ]


def test_cross_tenant_requests_under_concurrency_only_see_404(make_settings, live_gateway):
    settings = make_settings(DROPBATCH_CHUNK_LINES="2")
    live = live_gateway(settings, token_cache_seconds=0)
    ctx = live.ctx
    tokens = {}
    for tenant in ("alpha", "bravo"):
        ctx.tenants.create(tenant, "enterprise")
        tokens[tenant] = ctx.tokens.create(tenant).token
    ids: dict[str, dict[str, str]] = {}
    with httpx.Client(base_url=live.url, timeout=30) as http:
        for tenant in tokens:
            ids[tenant] = _own_objects(http, tokens[tenant], tenant)
        Watcher(ctx).run_once()
        Runner(ctx, EchoEngine(ctx.store, settings)).run_once()
        for tenant, token in tokens.items():
            auth = {"Authorization": f"Bearer {token}"}
            done = http.get(f"/v1/batches/{ids[tenant]['batch']}", headers=auth).json()
            assert done["status"] == "completed"
            ids[tenant]["output"] = done["output_file_id"]
            body = {
                "input_file_id": ids[tenant]["file"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            ids[tenant]["pending"] = http.post("/v1/batches", headers=auth, json=body).json()["id"]  # stays validating
        before = {t: _snapshot(http, tokens[t], ids[t]) for t in tokens}

    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def hammer(me: str, other: str, worker: int) -> None:
        auth = {"Authorization": f"Bearer {tokens[me]}"}
        forbidden = [*ids[other].values(), f"secret words of {other}", f"{other}.jsonl", f"{other}-1"]
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for _ in range(ROUNDS):
                for method, path, body in _matrix(ids[other]):
                    response = http.request(method, path, headers=auth, json=body)
                    sent = path + json.dumps(body)  # the caller's own words may be echoed back to it
                    leaked = [text for text in forbidden if text in response.text and text not in sent]
                    ok = response.status_code == 404 and set(response.json().get("error", {})) >= {
                        "message",
                        "type",
                        "code",
                    }
                    own = http.get(f"/v1/batches/{ids[me]['batch']}", headers=auth)  # interleaved: own reads still work
                    with lock:
                        outcomes["cross 404" if ok and not leaked else "cross WRONG"] += 1
                        outcomes["own 200" if own.status_code == 200 else "own WRONG"] += 1
                        if not ok or leaked:
                            problems.append(
                                f"{me}→{other} {method} {path}: {response.status_code} {response.text[:200]} leaked={leaked}"
                            )
                for path in ("/v1/batches?limit=100", "/v1/files"):  # listings never show the other tenant
                    listing = http.get(path, headers=auth)
                    leaked = [text for text in ids[other].values() if text in listing.text]
                    with lock:
                        outcomes["list clean" if listing.status_code == 200 and not leaked else "list WRONG"] += 1
                        if leaked:
                            problems.append(f"{me} {path} shows {leaked}")

    jobs = [(me, other, w) for me, other in (("alpha", "bravo"), ("bravo", "alpha")) for w in range(THREADS)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(hammer, *job) for job in jobs]:
            future.result()

    print(f"\n[security] cross-tenant matrix, {len(jobs)} threads: {dict(outcomes)}")
    assert problems == []
    assert outcomes["cross 404"] == len(jobs) * ROUNDS * len(_matrix(ids["alpha"]))
    with httpx.Client(base_url=live.url, timeout=30) as http:
        after = {t: _snapshot(http, tokens[t], ids[t]) for t in tokens}
    assert after == before  # nothing deleted, cancelled or changed by the other tenant


def _snapshot(http: httpx.Client, token: str, ids: dict[str, str]) -> dict[str, object]:
    auth = {"Authorization": f"Bearer {token}"}
    batches = {name: http.get(f"/v1/batches/{ids[name]}", headers=auth).json() for name in ("batch", "pending")}
    return {
        "batches": {name: (b["status"], b["request_counts"], b.get("output_file_id")) for name, b in batches.items()},
        "files": {name: http.get(f"/v1/files/{ids[name]}", headers=auth).json() for name in ("file", "output")},
        "content": http.get(f"/v1/files/{ids['output']}/content", headers=auth).content,
    }
