"""Hostile manifests through the watcher: rejected with a readable rejection object, never admitted, never a crash.

Each generated case is a legitimate job (acme/job: a valid input and a signed
manifest) turned hostile in one way: path traversal in the job name or in input
keys, forged tenants and keys, forged or replayed signatures, oversize fields,
non-canonical bytes, unicode look-alikes, a random byte flip, or a manifest under
a key that is not a job prefix at all. An attacker holding acme's own key signs
what it can. Whatever the case, after a watcher pass:

- a manifest under ``<tenant>/<job>/manifest.json`` has a FAILED batch and a
  ``rejection.json`` beside it whose code is one the case allows;
- a manifest under any other key is ignored (no batch, no rejection);
- nothing is queued, reserved, checkpointed or written to the outbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from fuzz_support import (
    chat_line,
    drop,
    encode_line,
    file_bytes,
    fuzz_settings,
    manifest_dict,
    nonce_for,
    signed,
    world,
)
from hypothesis import given, note
from hypothesis import strategies as st

from dropbatch.models import BatchStatus
from dropbatch.storage.keys import JobRef, job_of_manifest_key
from watcher.service import Watcher

INPUT = b"".join(encode_line(chat_line(f"r-{i}", f"hello {i}")) + b"\n" for i in range(3))
INVALID = {"invalid_manifest"}
EXAMPLES_PER_KIND = 40

TRAVERSAL_NAMES = (
    "..",
    "../beta",
    "a/../../b",
    "./job",
    "job/..",
    "..\\beta",
    "job\x00",
    ".hidden",
    "%2e%2e",
    "",
    " job",
    "j" * 129,
)
TRAVERSAL_KEYS = (
    "acme/../beta/job/input.jsonl",
    "acme/job/../../beta/input.jsonl",
    "/acme/job/input.jsonl",
    "acme//input.jsonl",
    "acme/job/./input.jsonl",
    "acme/job/../input.jsonl",
    "beta/job/input.jsonl",
    "acme/job/manifest.json",
    "acme/job/rejection.json",
    "acme",
    "acme/job/in put.jsonl",
    "acme/job/\u0130nput.jsonl",
)
PATH_ALPHABET = "./\\%2eE0aj \x00\u2024\uff0e\u200b"
LOOKALIKE_TENANTS = (
    "\u0430cme",
    "\uff41\uff43\uff4d\uff45",
    "ac\u200bme",
    "\u202eemca",
    "acme\u0301",
    "ACME",
    "acm\u0435",
)
NOT_JOB_KEYS = (
    "acme/manifest.json",
    "acme/job/sub/manifest.json",
    "../acme/job/manifest.json",
    "acme/../job/manifest.json",
    "acme/job/manifest.json.bak",
    "acme/job/MANIFEST.json",
    "\u0430cme/job/manifest.json",
    "acme/j\u200bob/manifest.json",
    "/acme/job/manifest.json",
    "acme/.files/manifest.json",
)


@dataclass
class Case:
    name: str
    manifest_key: str
    manifest: bytes
    inputs: list[tuple[str, bytes]]
    codes: set[str]  # what the rejection may say; empty: the key is not a job and must be ignored
    setup_legit: bool = False  # a legitimate acme/legit job is admitted first (for replays)


def _base(w, *, tenant="acme", job="job", key=None, inputs=None, nonce=None, **fields: Any) -> dict[str, Any]:
    key = key or w.keys["acme"]
    inputs = inputs if inputs is not None else [(f"{tenant}/{job}/input.jsonl", INPUT)]
    return manifest_dict(
        tenant=tenant, job=job, key_id=key.key_id, inputs=inputs, nonce=nonce or nonce_for(tenant, job), **fields
    )


@st.composite
def hostile(draw: st.DrawFn, w, kind: str) -> Case:
    acme, beta = w.keys["acme"], w.keys["beta"]
    default = JobRef("acme", "job")
    inputs = [("acme/job/input.jsonl", INPUT)]
    if kind == "traversal_job":
        job = draw(st.one_of(st.sampled_from(TRAVERSAL_NAMES), st.text(PATH_ALPHABET, max_size=12)))
        m = _base(w, job=job)
        m["inputs"] = [{**m["inputs"][0], "key": "acme/job/input.jsonl"}]
        # A generated name can be a plain valid one: then it names another job than the prefix.
        return Case(
            kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, INVALID | {"prefix_mismatch"}
        )
    if kind == "traversal_input":
        m = _base(w)
        key = draw(st.one_of(st.sampled_from(TRAVERSAL_KEYS), st.text(PATH_ALPHABET, max_size=16).map("acme/".__add__)))
        m["inputs"] = [{**m["inputs"][0], "key": key}]
        # A generated key can be a plain key under acme/ that nobody uploaded.
        return Case(kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, INVALID | {"missing_input"})
    if kind == "forged_tenant_prefix":  # acme signs a job claiming to be beta's, dropped in acme's prefix
        m = _base(w, tenant="beta", key=draw(st.sampled_from([acme, beta])))
        beta_inputs = [("beta/job/input.jsonl", INPUT)]
        return Case(
            kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs + beta_inputs, {"prefix_mismatch"}
        )
    if kind == "forged_key_owner":  # acme's key signing a job in beta's prefix
        m = _base(w, tenant="beta")
        ref = JobRef("beta", "job")
        return Case(
            kind,
            ref.manifest_key,
            file_bytes(signed(m, acme.secret)),
            [("beta/job/input.jsonl", INPUT)],
            {"unknown_key"},
        )
    if kind == "unknown_tenant":
        ghost = draw(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True).filter(lambda t: t not in ("acme", "beta"))
        )
        m = _base(w, tenant=ghost)
        ref = JobRef(ghost, "job")
        return Case(
            kind,
            ref.manifest_key,
            file_bytes(signed(m, acme.secret)),
            [(f"{ghost}/job/input.jsonl", INPUT)],
            {"unknown_tenant"},
        )
    if kind == "forged_signature":  # names beta's key id, signed with acme's secret; or a made-up signature
        m = _base(w, tenant="beta", key=beta)
        ref = JobRef("beta", "job")
        forged = signed(m, acme.secret)
        if draw(st.booleans()):
            forged["signature"] = draw(
                st.one_of(
                    st.sampled_from(
                        ["hmac-sha256:", "x", forged["signature"].upper(), signed(m, beta.secret + " ")["signature"]]
                    ),
                    st.text("0123456789abcdef", min_size=64, max_size=64).map("hmac-sha256:".__add__),
                )
            )
        return Case(kind, ref.manifest_key, file_bytes(forged), [("beta/job/input.jsonl", INPUT)], {"bad_signature"})
    if kind == "revoked_key":
        m = _base(w, key=w.revoked)
        return Case(kind, default.manifest_key, file_bytes(signed(m, w.revoked.secret)), inputs, {"revoked_key"})
    if kind == "unknown_key":
        key_id = draw(st.sampled_from(["key_deadbeef00000000", "key_../../etc", "key_", "tok_abc", "key_" + "a" * 60]))
        m = {**_base(w), "key_id": key_id}
        return Case(kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, {"unknown_key"})
    if kind == "oversize":
        m = _base(w)
        what = draw(
            st.sampled_from(
                [
                    "metadata_pairs",
                    "metadata_value",
                    "metadata_key",
                    "model",
                    "key_id",
                    "nonce",
                    "inputs",
                    "size",
                    "created_at",
                    "extra",
                    "too_large",
                ]
            )
        )
        if what == "too_large":
            data = file_bytes(signed(m, acme.secret))
            return Case(
                kind, default.manifest_key, data[:-2] + b" " * (256 * 1024) + data[-2:], inputs, {"manifest_too_large"}
            )
        if what == "metadata_pairs":
            m["metadata"] = {f"k{i}": "v" for i in range(draw(st.integers(17, 40)))}
        elif what == "metadata_value":
            m["metadata"] = {"k": "v" * draw(st.integers(513, 5000))}
        elif what == "metadata_key":
            m["metadata"] = {"k" * draw(st.integers(65, 500)): "v"}
        elif what == "model":
            m["model"] = "m" * draw(st.integers(257, 3000))
        elif what == "key_id":
            m["key_id"] = "key_" + "a" * draw(st.integers(61, 500))
        elif what == "nonce":
            m["nonce"] = "n" * draw(st.integers(129, 1000))
        elif what == "inputs":
            m["inputs"] = [
                {**m["inputs"][0], "key": f"acme/job/in{i}.jsonl"} for i in range(draw(st.integers(101, 150)))
            ]
        elif what == "size":
            m["inputs"] = [{**m["inputs"][0], "size": draw(st.sampled_from([-1, -(2**63), "10", 1.5, None]))}]
        elif what == "created_at":
            m["created_at"] = draw(st.sampled_from([-1, "now", None, 1e300]))
        else:
            m["owner"] = "root"
        # A lax type ("10" for a size) parses, but no longer matches the canonical bytes.
        return Case(
            kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, INVALID | {"manifest_not_canonical"}
        )
    if kind == "non_canonical":
        m = signed(_base(w), acme.secret)
        how = draw(
            st.sampled_from(
                [
                    "compact",
                    "unsorted",
                    "crlf",
                    "trailing",
                    "bom",
                    "escaped",
                    "raw_unicode",
                    "duplicate_key",
                    "no_newline",
                    "tabs",
                ]
            )
        )
        canonical = file_bytes(m)
        if how == "compact":
            data = json.dumps(m, sort_keys=True).encode()
        elif how == "unsorted":
            data = (json.dumps(dict(reversed(list(m.items()))), indent=2) + "\n").encode()
        elif how == "crlf":
            data = canonical.replace(b"\n", b"\r\n")
        elif how == "trailing":
            data = canonical + draw(st.sampled_from([b" ", b"\n", b"\x00", b"{}"]))
        elif how == "bom":
            data = b"\xef\xbb\xbf" + canonical
        elif how == "escaped":
            data = canonical.replace(b'"acme"', b'"\\u0061cme"', 1)
        elif how == "raw_unicode":
            m2 = signed({**_base(w), "metadata": {"note": "caf\u00e9"}}, acme.secret)
            data = (json.dumps(m2, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
        elif how == "duplicate_key":
            data = canonical.replace(b'"job": "job"', b'"job": "other",\n  "job": "job"', 1)
        elif how == "no_newline":
            data = canonical[:-1]
        else:
            data = canonical.replace(b"  ", b"\t")
        return Case(kind, default.manifest_key, data, inputs, {"manifest_not_canonical", "invalid_manifest"})
    if kind == "lookalike":
        tenant = draw(st.sampled_from(LOOKALIKE_TENANTS))
        in_key = draw(st.booleans())
        m = _base(w, tenant=tenant)
        key = f"{tenant}/job/manifest.json" if in_key else default.manifest_key
        # In the key, a non-ASCII tenant is not a job prefix at all; in the manifest it is an invalid name.
        codes = (
            set() if in_key and job_of_manifest_key(key) is None else INVALID | {"unknown_tenant", "prefix_mismatch"}
        )
        return Case(kind, key, file_bytes(signed(m, acme.secret)), inputs, codes)
    if kind == "byte_flip":
        data = bytearray(file_bytes(signed(_base(w), acme.secret)))
        at = draw(st.integers(0, len(data) - 1))
        new = draw(st.integers(0, 255).filter(lambda b: b != data[at]))
        data[at] = new
        note(f"byte {at}: {new!r}")
        return Case(kind, default.manifest_key, bytes(data), inputs, ALL_REJECTIONS)
    if kind == "not_a_job_key":
        key = draw(st.one_of(st.sampled_from(NOT_JOB_KEYS), st.text(max_size=30).map(lambda t: t + "/manifest.json")))
        codes = set() if job_of_manifest_key(key) is None else ALL_REJECTIONS
        return Case(kind, key, file_bytes(signed(_base(w), acme.secret)), inputs, codes)
    if kind == "replay":  # legit's exact bytes under another job, or re-signed for it with legit's nonce
        legit = signed(_base(w, job="legit"), acme.secret)
        if draw(st.booleans()):
            return Case(kind, default.manifest_key, file_bytes(legit), inputs, {"prefix_mismatch"}, setup_legit=True)
        m = _base(w, nonce=legit["nonce"])
        return Case(
            kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, {"replayed_nonce"}, setup_legit=True
        )
    if kind == "input_mismatch":  # signed for one input, another uploaded (or none)
        m = signed(_base(w), acme.secret)
        uploaded = draw(st.sampled_from([INPUT[:-1], INPUT + b"\n", INPUT.replace(b"hello", b"HELLO"), b""]))
        return Case(kind, default.manifest_key, file_bytes(m), [("acme/job/input.jsonl", uploaded)], {"input_mismatch"})
    if kind == "unsigned":
        return Case(kind, default.manifest_key, file_bytes(_base(w)), inputs, {"unsigned_manifest"})
    m = _base(w, model=draw(st.sampled_from(["gpt-4o", "../model", "dropbatch-tiny ", "DROPBATCH-TINY"])))
    return Case(kind, default.manifest_key, file_bytes(signed(m, acme.secret)), inputs, {"model_not_found"})


KINDS = (
    "traversal_job",
    "traversal_input",
    "forged_tenant_prefix",
    "forged_key_owner",
    "unknown_tenant",
    "forged_signature",
    "revoked_key",
    "unknown_key",
    "oversize",
    "non_canonical",
    "lookalike",
    "byte_flip",
    "not_a_job_key",
    "replay",
    "input_mismatch",
    "unsigned",
    "wrong_model",
)
ALL_REJECTIONS = {
    "invalid_manifest",
    "manifest_not_canonical",
    "manifest_too_large",
    "unsigned_manifest",
    "bad_signature",
    "prefix_mismatch",
    "unknown_tenant",
    "unknown_key",
    "revoked_key",
    "replayed_nonce",
    "model_not_found",
    "input_mismatch",
    "missing_input",
}


def _keys(ctx, bucket: str, prefix: str = "") -> list[str]:
    return [info.key for info in ctx.store.list(bucket, prefix)]


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_manifests_are_rejected_readably_and_never_run(kind, case_counter):
    @fuzz_settings(EXAMPLES_PER_KIND)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        w = world()
        ctx = w.ctx
        case = data.draw(hostile(w, kind), label="case")
        case_counter()
        legit_id = None
        if case.setup_legit:
            legit = signed(_base(w, job="legit"), w.keys["acme"].secret)
            drop(
                w,
                manifest_key="acme/legit/manifest.json",
                manifest=file_bytes(legit),
                inputs=[("acme/legit/input.jsonl", INPUT)],
            )
            Watcher(ctx).run_once()
            legit_id = ctx.batches.for_job(JobRef("acme", "legit")).id
        drop(w, manifest_key=case.manifest_key, manifest=case.manifest, inputs=case.inputs)

        Watcher(ctx).run_once()

        control = ctx.settings.storage.control_bucket
        batches = [k for k in _keys(ctx, control, "batches/") if legit_id is None or legit_id not in k]
        ref = job_of_manifest_key(case.manifest_key)
        if not case.codes:
            assert ref is None
            assert batches == []
        else:
            assert ref is not None
            record = ctx.batches.for_job(ref)
            assert record.status is BatchStatus.FAILED, (case.name, record.status)
            rejection = json.loads(ctx.store.get(ctx.inbox, ref.rejection_key)[0])
            assert rejection["code"] in case.codes, (case.name, rejection)
            assert rejection["reason"] and rejection["batch_id"] == record.id
            assert len(batches) == 1
        assert [e.batch_id for e in ctx.queue.entries()] == ([legit_id] if legit_id else [])
        assert ctx.quotas.usage("acme", "premium")[0] == (3 if legit_id else 0)
        assert ctx.quotas.usage("beta", "premium")[0] == 0
        assert _keys(ctx, ctx.outbox) == []
        assert _keys(ctx, control, "work/") == []

    check()
