"""Every key layout, and the names allowed in them."""

from __future__ import annotations

import pytest

from dropbatch.errors import InvalidRequest
from dropbatch.storage.keys import (
    ControlKeys,
    JobRef,
    OutputPrefix,
    check_name,
    is_manifest_name,
    job_of_manifest_key,
    uploaded_file_key,
    why_not_a_manifest_key,
)


@pytest.mark.parametrize("name", ["acme", "a", "A1", "team_a-b.c", "0abc", "x" * 128, "v1.2"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name, "tenant") == name


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "..", "a..b", "a/b", "../etc", "a\\b", "-dash", "_under", "x" * 129, "sp ace", "é", "a\n", None, 5],
)
def test_check_name_rejects(name) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_name(name, "job")
    assert (info.value.code, info.value.param) == ("invalid_job", "job")


def test_job_ref_keys() -> None:
    ref = JobRef("acme", "j1")
    assert (ref.prefix, ref.manifest_key, ref.rejection_key, str(ref)) == (
        "acme/j1/",
        "acme/j1/manifest.json",
        "acme/j1/rejection.json",
        "acme/j1",
    )


@pytest.mark.parametrize("text", ["acme/j1", "/acme/j1/", "acme/j1/"])
def test_job_ref_parse(text: str) -> None:
    assert JobRef.parse(text) == JobRef("acme", "j1")


@pytest.mark.parametrize("text, code", [("acme", "invalid_job"), ("", "invalid_job"), ("acme/../x", "invalid_job"), ("../acme/j", "invalid_tenant"), ("acme/j/k", "invalid_job")])
def test_job_ref_parse_rejects(text: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        JobRef.parse(text)
    assert info.value.code == code


@pytest.mark.parametrize(
    "key, ref",
    [
        ("acme/j1/manifest.json", JobRef("acme", "j1")),
        ("acme/j1/input.jsonl", None),
        ("acme/j1/rejection.json", None),
        ("acme/manifest.json", None),
        ("acme/j1/sub/manifest.json", None),
        ("acme/../manifest.json", None),
        ("acme/a..b/manifest.json", None),
        ("../j1/manifest.json", None),
        (".acme/j1/manifest.json", None),
        ("acme/.files/manifest.json", None),
        ("/acme/manifest.json", None),
        ("", None),
    ],
)
def test_job_of_manifest_key(key: str, ref: JobRef | None) -> None:
    assert job_of_manifest_key(key) == ref


def test_output_prefix_and_partial() -> None:
    sha = "ab" * 32
    full = OutputPrefix("acme", sha)
    assert full.prefix == f"acme/{sha}/"
    assert (full.output_key, full.errors_key, full.summary_key) == (
        f"acme/{sha}/output.jsonl",
        f"acme/{sha}/errors.jsonl",
        f"acme/{sha}/summary.json",
    )
    partial = OutputPrefix("acme", sha, partial_of="batch_1")
    assert partial.prefix == f"acme/{sha}/partial-batch_1/"
    assert partial.summary_key == f"acme/{sha}/partial-batch_1/summary.json"
    assert partial.summary_key != full.summary_key  # partial results never stand in for the work


def test_control_keys_sort_in_the_orders_they_promise() -> None:
    # Newest first: a later created_at sorts earlier.
    assert ControlKeys.batch_index("t", 2_000, "b") < ControlKeys.batch_index("t", 1_000, "a")
    assert ControlKeys.file_index("t", 2_000, "b") < ControlKeys.file_index("t", 1_000, "a")
    # Earliest deadline first, also across digit counts.
    assert ControlKeys.queue_entry(999, "z") < ControlKeys.queue_entry(1_000, "a")
    assert ControlKeys.queue_entry(5, "a").startswith(ControlKeys.QUEUE_PREFIX)
    assert ControlKeys.chunk_result("b", 2) < ControlKeys.chunk_result("b", 10)
    assert ControlKeys.chunk_result("b", 2).startswith(ControlKeys.chunk_prefix("b"))
    assert ControlKeys.batch_index("t", 1, "x").startswith(ControlKeys.batch_index_prefix("t"))
    assert uploaded_file_key("acme", "file-1") == "acme/.files/file-1.jsonl"
    assert job_of_manifest_key(uploaded_file_key("acme", "manifest")) is None


@pytest.mark.parametrize(
    ("key", "named", "why"),
    [
        ("acme/j1/manifest.json", True, "is not a job's manifest key"),
        ("acme/j1/Manifest.JSON", True, "names the file 'Manifest.JSON'"),
        ("acme/a/b/manifest.json", True, "has 3 folder level(s)"),
        ("acme/manifest.json", True, "has 1 folder level(s)"),
        ("acme/jöb/manifest.json", True, "has an invalid job name"),
        ("acme/a..b/manifest.json", True, "has an invalid job name"),
        ("acme/j1/rejection.json", False, None),
        ("acme/j1/manifest.json.bak", False, None),
        ("acme/j1/my-manifest.json", False, None),
    ],
)
def test_manifest_named_keys_and_why_they_are_not_admitted(key: str, named: bool, why: str | None) -> None:
    assert is_manifest_name(key) is named
    if why is not None:
        assert why in why_not_a_manifest_key(key)
