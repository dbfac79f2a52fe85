"""Secrets are compared in constant time: ``hmac.compare_digest`` decides, never ``==``.

Source level: the functions that compare a signature, a token hash or the admin
token call ``hmac.compare_digest``, and no ``==``/``!=`` in those modules touches a
secret-bearing name. Behaviour: with ``compare_digest`` replaced by a spy that
answers the opposite, the decision flips, so the spy's answer is the one used.
"""

from __future__ import annotations

import ast
import asyncio
import hmac
from pathlib import Path

import pytest
from starlette.requests import Request

import gateway.auth
from dropbatch.auth.tokens import Tokens, hash_token
from dropbatch.context import Context
from dropbatch.errors import AuthenticationFailed, ManifestRejected, PermissionDenied
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from gateway.ratelimit import AttemptLimiter, TierRate
from manifests import Manifest, sign, verify_signature
from manifests.signing import SIGNATURE_PREFIX

REPO = Path(__file__).resolve().parents[2]
# (module file, function that must call hmac.compare_digest)
CONSTANT_TIME = [
    ("manifests/signing.py", "verify_signature"),
    ("dropbatch/auth/tokens.py", "matching"),
    ("gateway/auth.py", "check_admin"),
]
SECRET_WORDS = ("signature", "token_hash", "digest", "secret", "admin_token", "expected")  # as parts of a name
SECRET_NAMES = ("token",)  # as a whole name (``token_id`` is public)


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise AssertionError(f"no function {name}")


def _calls_compare_digest(node: ast.AST) -> bool:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "compare_digest":
                return True
            if isinstance(func, ast.Name) and func.id == "compare_digest":
                return True
    return False


def _names(node: ast.AST) -> set[str]:
    """Names an operand reads, except inside ``len(...)`` (a length is not the secret)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
        return set()
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id.lower())
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr.lower())
    return found


@pytest.mark.parametrize(("path", "function"), CONSTANT_TIME)
def test_secret_comparisons_use_compare_digest(path, function):
    tree = ast.parse((REPO / path).read_text(), filename=path)
    assert _calls_compare_digest(_function(tree, function)), f"{path}:{function} does not call hmac.compare_digest"
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                continue  # `is None`-style checks carry no secret
            touched = {n for o in operands for n in _names(o)}
            risky = {n for n in touched if n in SECRET_NAMES or any(word in n for word in SECRET_WORDS)}
            assert not risky, f"{path}:{node.lineno} compares {sorted(risky)} with ==/!="


class Spy:
    """``hmac.compare_digest`` that records its calls and answers ``answer`` (or the truth)."""

    def __init__(self, answer: bool | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[bytes, bytes]] = []
        self.real = hmac.compare_digest

    def __call__(self, a, b) -> bool:
        self.calls.append((a, b))
        return self.real(a, b) if self.answer is None else self.answer


def _manifest() -> Manifest:
    return Manifest(
        tenant="acme",
        job="j1",
        key_id="key_0123456789abcdef",
        inputs=[{"key": "acme/j1/input.jsonl", "size": 1, "sha256": "0" * 64}],
        endpoint="/v1/chat/completions",
        model="dropbatch-tiny",
        created_at=1_700_000_000,
        nonce="n" * 24,
    )


def test_manifest_signature_decision_is_compare_digests(monkeypatch):
    signed = sign(_manifest(), "secret-1")
    spy = Spy(answer=False)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    with pytest.raises(ManifestRejected):
        verify_signature(signed, "secret-1")  # right secret, but the comparison says no
    assert spy.calls and spy.calls[0][1] == signed.signature.encode()
    spy.answer = True
    forged = signed.model_copy(update={"signature": SIGNATURE_PREFIX + "0" * 64})
    verify_signature(forged, "secret-1")  # wrong signature, but the comparison says yes
    assert len(spy.calls) == 2


def test_token_lookup_decision_is_compare_digests(monkeypatch):
    settings = Settings.from_env({})
    storage = settings.storage
    ctx = Context(
        settings=settings,
        store=MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket]),
    )
    ctx.tenants.create("acme", "basic")
    issued = ctx.tokens.create("acme")
    tokens: Tokens = ctx.tokens
    spy = Spy(answer=False)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert tokens.lookup(issued.token) is None
    assert spy.calls == [(hash_token(issued.token).encode(), hash_token(issued.token).encode())]
    spy.answer = None
    assert tokens.lookup(issued.token).id == issued.record.id


def _request(token: str | None) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request({"type": "http", "method": "GET", "path": "/admin/tokens", "headers": headers, "query_string": b""})


class _NoTenants:
    """TokenAuth's surface check_admin uses: no token is known, attempts are generous."""

    attempts = AttemptLimiter(TierRate(per_minute=60, burst=100))

    async def resolve(self, token):
        return None


def _check_admin(request: Request, admin_token: str, auth: _NoTenants) -> None:
    asyncio.run(gateway.auth.check_admin(request, admin_token, auth))


def test_admin_token_decision_is_compare_digests(monkeypatch):
    spy = Spy(answer=False)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    with pytest.raises(AuthenticationFailed):
        _check_admin(_request("admin-secret"), "admin-secret", _NoTenants())
    assert spy.calls == [(b"admin-secret", b"admin-secret")]
    spy.answer = True
    _check_admin(_request("not-the-admin-token"), "admin-secret", _NoTenants())
    with pytest.raises((AuthenticationFailed, PermissionDenied)):
        spy.answer = None
        _check_admin(_request("not-the-admin-token"), "admin-secret", _NoTenants())
