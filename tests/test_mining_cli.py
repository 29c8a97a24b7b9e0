"""``xlir mine`` killed with SIGKILL in the middle of a job, then run again: it continues, and the output is whole."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

XLIR = Path(sys.executable).with_name("xlir")
WORDS = (
    "river", "mountain", "city", "bread", "coffee", "window", "garden", "teacher", "music", "winter",
    "summer", "letter", "doctor", "market", "train", "bridge", "forest", "island", "library", "morning",
    "evening", "student", "friend", "kitchen", "harbor", "village",
)


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + f" {i}." for i in range(n)]


@pytest.mark.slow  # about a minute: a real `xlir mine` killed and resumed
def test_killed_mine_job_resumes(tmp_path: Path) -> None:
    src_sents = sentences(5000, 1)
    tgt_sents = [s.upper() for s in src_sents[:4000]] + sentences(1000, 2)
    random.Random(3).shuffle(tgt_sents)
    src, tgt, out = tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "pairs.tsv"
    src.write_text("\n".join(src_sents) + "\n")
    tgt.write_text("\n".join(tgt_sents) + "\n")
    home = tmp_path / "home"
    env = {**os.environ, "XLIR_HOME": str(home)}
    args = [str(XLIR), "mine", str(src), str(tgt), "--out", str(out), "--model", "minilm-en", "--search", "ivf",
            "--chunk", "700", "--no-progress", "--retrieval", "intersect", "--centering", "off"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        states = list((home / "cache" / "mining").glob("*/*.partial.json"))
        if states:
            try:
                done = json.loads(states[0].read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = 0
        if done >= 2048:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"job ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written where the output goes
    assert (tmp_path / "pairs.tsv.work").is_dir()

    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    reused = int(res.stderr.split("reused: ")[1].split(" ")[0].replace(",", ""))
    assert reused >= 2048  # the source embeddings done before the kill were kept
    assert not (tmp_path / "pairs.tsv.work").exists()
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["score", "src", "tgt", "src_line", "tgt_line"]
    correct = sum(r[2] == r[1].upper() for r in rows[1:])
    assert correct >= 0.95 * 4000

    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)  # everything cached now
    assert res.returncode == 0 and "reused: 5,000 + 5,000 cached embeddings" in res.stderr
