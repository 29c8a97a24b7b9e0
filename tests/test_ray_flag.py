"""``--ray [ADDRESS]``: the optional address is taken only when the next token looks like one."""

from __future__ import annotations

import pytest

from cli.main import RAY_LOCAL, normalize_ray_flag
from indexer.ray_cluster import LOCAL


@pytest.mark.parametrize(("argv", "expected"), [
    (["mine", "a", "b", "--ray"], ["mine", "a", "b", "--ray=local"]),
    (["mine", "a", "b", "--ray", "10.0.0.1:6379", "-q"], ["mine", "a", "b", "--ray=10.0.0.1:6379", "-q"]),
    (["index", "--ray", "corpus.jsonl", "--out", "d"], ["index", "--ray=local", "corpus.jsonl", "--out", "d"]),
    (["index", "c", "--ray", "auto"], ["index", "c", "--ray=auto"]),
    (["index", "c", "--ray", "ray://head:10001"], ["index", "c", "--ray=ray://head:10001"]),
    (["index", "c", "--ray", "--quiet"], ["index", "c", "--ray=local", "--quiet"]),
    (["index", "c", "--ray=h:1"], ["index", "c", "--ray=h:1"]),
    (["search", "c:\\x"], ["search", "c:\\x"]),
])
def test_normalize_ray_flag(argv: list[str], expected: list[str]) -> None:
    assert normalize_ray_flag(argv) == expected


def test_ray_alone_is_what_connect_takes_for_a_local_cluster() -> None:
    assert RAY_LOCAL == LOCAL


def test_onnx_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray task's CPU share (OMP_NUM_THREADS) caps ONNX Runtime's threads; unset or invalid, the affinity counts."""
    import os

    from models.onnx_backend import cpu_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_cores() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 5))
    assert cpu_cores() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    assert cpu_cores() == cores


@pytest.mark.parametrize(("given", "env", "expected"), [
    ("local", None, None), (None, None, None), ("local", "10.0.0.5:6379", "10.0.0.5:6379"), ("auto", None, "auto"),
])
def test_connect_resolves_local_to_ray_address_or_a_new_cluster(
        monkeypatch: pytest.MonkeyPatch, given: str | None, env: str | None, expected: str | None) -> None:
    """``--ray`` alone / XLIR_RAY=local: $RAY_ADDRESS when set, else a new local cluster (address None)."""
    import indexer.ray_cluster as rc

    calls: list[dict[str, object]] = []

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(address: str | None = None, **kwargs: object) -> None:
            calls.append({"address": address, **kwargs})

    monkeypatch.setattr(rc, "require_ray", lambda: FakeRay)
    monkeypatch.setattr(rc, "_probe", lambda address: None)
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert rc.connect(given) is FakeRay
    assert calls[0]["address"] == expected
    assert ("include_dashboard" in calls[0]) == (expected is None)  # a new local cluster is started lean
