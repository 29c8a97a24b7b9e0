"""``POST /mine``: bitext mining of two small lists with the server's encoder, one job at a time.

The same code as ``xlir mine`` (:func:`indexer.mining_job.mine_texts_result`); large jobs belong to the CLI,
so the lists are capped (``XLIR_MINE_MAX_SENTENCES`` per side) and a second job while one runs answers 429.
A job holds its slot until its worker thread has finished, even when the client that asked went away.
"""

from __future__ import annotations

import asyncio
import threading

from app.schemas import MinedPairOut, MineRequest, MineResponse
from app.service import check_text
from indexer.mining import MineOptions
from indexer.mining_job import mine_texts_result
from models.base import Encoder
from xlir.errors import Overloaded, PayloadTooLarge


class MiningService:
    def __init__(self, encoder: Encoder, *, max_sentences: int = 5000, max_chars: int = 2048,
                 max_jobs: int = 1) -> None:
        self.encoder = encoder
        self.max_sentences = max_sentences
        self.max_chars = max_chars
        self._slots = threading.BoundedSemaphore(max_jobs)

    def check(self, req: MineRequest) -> None:
        for side, texts in (("src", req.src), ("tgt", req.tgt)):
            if len(texts) > self.max_sentences:
                raise PayloadTooLarge(f"{side} has {len(texts)} sentences; POST /mine takes at most "
                                      f"{self.max_sentences} per side (XLIR_MINE_MAX_SENTENCES): use `xlir mine` "
                                      "for larger jobs")
            for i, text in enumerate(texts):
                check_text(f"{side}[{i}]", text, self.max_chars)

    def run(self, req: MineRequest) -> MineResponse:
        """Synchronous: validate, mine, shape the response."""
        self.check(req)
        return self._mine(req)

    def _mine(self, req: MineRequest) -> MineResponse:
        """Mine an already validated request."""
        opts = MineOptions(k=req.k, margin=req.margin, retrieval=req.retrieval, threshold=req.threshold,
                           one_to_one=req.one_to_one, dedup=req.dedup, centering=req.centering.value)
        res = mine_texts_result(self.encoder, req.src, req.tgt, opts)
        m = res.mined
        pairs = [
            MinedPairOut(score=sc, src=s, tgt=t, src_text=req.src[s] if req.texts else None,
                         tgt_text=req.tgt[t] if req.texts else None)
            for sc, s, t in zip(m.score.tolist(), m.src.tolist(), m.tgt.tolist(), strict=True)
        ]
        search = f"src->tgt: {res.fwd_plan.describe()}; tgt->src: {res.bwd_plan.describe()}"
        return MineResponse(pairs=pairs, src_count=len(req.src), tgt_count=len(req.tgt), search=search,
                            embed_ms=round(res.embed_seconds * 1000, 1), mine_ms=round(res.mine_seconds * 1000, 1))

    def _mine_in_slot(self, req: MineRequest) -> MineResponse:
        """Runs in the worker thread, which alone releases the slot: when the work has really ended."""
        try:
            return self._mine(req)
        finally:
            self._slots.release()

    async def mine(self, req: MineRequest) -> MineResponse:
        """:meth:`run` in a worker thread; ``Overloaded`` (429) at once when every job slot is taken.

        A cancelled request (the client disconnected) stops waiting, not the job: the thread is shielded from the
        cancellation (an executor job cancelled before it starts would never release its slot) and keeps the slot
        until it returns.
        """
        self.check(req)
        if not self._slots.acquire(blocking=False):
            raise Overloaded("a mining job is already running; retry later")
        try:
            job = asyncio.get_running_loop().run_in_executor(None, self._mine_in_slot, req)
        except BaseException:  # never submitted (executor shut down): the slot is still ours to give back
            self._slots.release()
            raise
        job.add_done_callback(_consume)
        return await asyncio.shield(job)


def _consume(job: asyncio.Future[MineResponse]) -> None:
    """Retrieve the outcome of a job nobody awaits any more (its client left), so asyncio does not warn about it."""
    if not job.cancelled():
        job.exception()
