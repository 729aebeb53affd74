"""Scoring the new frames of streams: one onnxruntime call for many of them.

A stream's ``feed`` returns a FrameRequest: its new MFCC frames after up to
``receptive_field_frames - 1`` frames of left context. ``score_requests``
scores any number of requests together: rows of similar length (or all
short) share one call, padded on the right (the network is causal, so padding after a frame
cannot change it), and each request gets back the logits of its new frames
only. A stream alone calls it with one request; the server's BatchScheduler
calls it with the requests of every stream that is due, in one worker thread,
off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.features import N_MFCC

if TYPE_CHECKING:
    from service.stream import FrameScorer

log = logging.getLogger(__name__)

MAX_PADDING = 0.5  # a row joins a call if padding it to the call's longest row adds at most this share,
SHORT_ROW_FRAMES = 64  # or if that row is this short: padding short rows costs less than another call


@dataclass(frozen=True)
class FrameRequest:
    """A stream's frames to score: ``frames`` (context + new, N_MFCC), of which the last ``new`` are new."""

    frames: np.ndarray
    new: int


def score_requests(scorer: FrameScorer, requests: list[FrameRequest]) -> list[np.ndarray]:
    """The logits (new, classes) of each request's new frames, in as few scorer calls as row lengths allow."""
    classes = len(scorer.labels)
    results = [np.zeros((0, classes), dtype=np.float32)] * len(requests)
    rows = sorted((i for i, request in enumerate(requests) if request.new), key=lambda i: -len(requests[i].frames))
    while rows:
        longest = len(requests[rows[0]].frames)
        group = [i for i in rows if longest <= SHORT_ROW_FRAMES or len(requests[i].frames) >= longest * (1 - MAX_PADDING)]
        rows = rows[len(group):]
        if len(group) == 1:
            batch = requests[group[0]].frames[None]
        else:
            batch = np.zeros((len(group), longest, N_MFCC), dtype=np.float32)
            for row, i in enumerate(group):
                batch[row, : len(requests[i].frames)] = requests[i].frames
        logits = scorer.frame_logits(batch)
        for row, i in enumerate(group):
            length, new = len(requests[i].frames), requests[i].new
            results[i] = logits[row, length - new : length]
    return results


class BatchScheduler:
    """Collects the FrameRequests of all streams of a process and scores them in one worker thread.

    Batching is natural: while one batch runs, the requests that arrive wait
    for the next, which starts as soon as the running one ends. A request
    therefore waits at most for the batch in progress; ``max_batch_frames``
    bounds a batch (about 10 ms of SwishNet-slim on one core per 4096 frames),
    and so that wait. Use ``async with`` inside the event loop.
    """

    def __init__(self, scorer: FrameScorer, max_batch_frames: int = 4096) -> None:
        self.scorer = scorer
        self.max_batch_frames = max_batch_frames
        self.batches = 0
        self.rows = 0
        self._pending: list[tuple[FrameRequest, asyncio.Future]] = []
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> BatchScheduler:
        self._ready = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="swishnet-batch")
        self._task = asyncio.create_task(self._run(), name="swishnet-batch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._executor is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    async def score(self, request: FrameRequest) -> np.ndarray:
        """The logits of the request's new frames, from the next batch."""
        if not request.new:
            return np.zeros((0, len(self.scorer.labels)), dtype=np.float32)
        if self._ready is None:
            raise RuntimeError("BatchScheduler used outside 'async with'")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._ready.set()
        return await future

    def _take(self) -> list[tuple[FrameRequest, asyncio.Future]]:
        """The oldest pending requests, up to max_batch_frames (at least one)."""
        frames, count = 0, 0
        for request, _ in self._pending:
            frames += len(request.frames)
            if count and frames > self.max_batch_frames:
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return [(request, future) for request, future in batch if not future.cancelled()]

    async def _run(self) -> None:
        assert self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            batch = self._take()
            if not self._pending:
                self._ready.clear()
            if not batch:
                continue
            requests = [request for request, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, score_requests, self.scorer, requests)
            except Exception as error:  # noqa: BLE001  (handed to every stream of the batch, which ends it)
                log.exception("scoring a batch of %d streams failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.rows += len(batch)
            for (_, future), logits in zip(batch, results):
                if not future.done():
                    future.set_result(logits)
