"""``--ray [ADDRESS]``: the optional address is taken only when the next token looks like one."""

from __future__ import annotations

import pytest

from cli.main import normalize_ray_flag, ray_address


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


def test_ray_address() -> None:
    assert ray_address(None) is None
    assert ray_address("local") is None
    assert ray_address("h:1") == "h:1"


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
