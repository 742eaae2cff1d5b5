"""The scheduler: one thread owns the predictor and decodes every running request in one batch.

Requests wait in a bounded queue. Between decode steps the scheduler admits waiting requests (up to
max_batch_size running at once; when nothing runs it first waits a few milliseconds so that requests
arriving together start together), encodes them grouped by compression setting (the vision side runs
one setting at a time), prefills them and joins them to the running batch. Each step samples one
token per sequence; a sequence that is finished, or whose client went away, leaves the batch.
"""
from __future__ import annotations

import base64
import collections
import io
import itertools
import logging
import threading
import time
from typing import Callable, Optional

import numpy as np

from paddle_rc.errors import UserError
from paddle_rc.models.generation import sample_next
from paddle_rc.pipeline import Predictor
from paddle_rc.serving.protocol import APIError, ChatRequest, Compression

log = logging.getLogger("paddle_rc.serve")


class QueueFull(Exception):
    pass


class Job:
    """One request's life in the engine. `emit` hands events to the HTTP side:
    ("started", info), ("delta", text), ("done", info), ("error", APIError)."""

    _ids = itertools.count(1)

    def __init__(self, request: ChatRequest, compression: Compression, emit: Callable[[tuple], None]):
        self.id = next(self._ids)
        self.request = request
        self.compression = compression
        self.emit = emit
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.admitted: Optional[float] = None
        self.first_token: Optional[float] = None
        self.max_tokens = 0
        self.ids: list = []
        self.emitted = ""
        self.rng = np.random.default_rng(request.seed)
        self.timings: dict = {}
        self.started_info: dict = {}
        self.batch_rows = 0  # sum over this job's decode steps of the sequences in the step
        self.steps = 0
        self.done = False


class Engine:
    def __init__(self, predictor: Predictor, *, max_batch_size: int = 8, max_queue: int = 64,
                 batch_window: float = 0.005, default_max_tokens: int = 256, metrics=None,
                 threads: Optional[int] = None):
        self.predictor = predictor
        self.positions = predictor.compression.positions
        self.max_batch_size = int(max_batch_size)
        self.max_queue = int(max_queue)
        self.batch_window = float(batch_window)
        self.default_max_tokens = int(default_max_tokens)
        self.context = int(predictor.config.llm.max_position_embeddings)
        self.eos = predictor.tok.llm.eos_token_id
        self.metrics = metrics
        self.threads = threads
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._batch = None  # the running DecodeBatch; its keys are Jobs
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # ---- called from the HTTP side ------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="paddle_rc-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue {self.max_queue})")
            self._queue.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job from the queue now, or from the batch at the next step."""
        if job.done:
            return
        job.cancelled.set()
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # running: the scheduler drops it before its next step
        self._count_cancel()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        batch = self._batch
        return 0 if batch is None else len(batch)

    # ---- the scheduler thread -------------------------------------------------------------------
    def _run(self) -> None:
        import paddle

        from paddle_rc import runtime

        runtime.configure(self.threads)  # thread settings are per thread in OpenMP: apply them here too
        with paddle.no_grad():
            while True:
                admitted = self._wait_for_work()
                if admitted is None:
                    return
                try:
                    if admitted:
                        self._admit(admitted)
                    if self._batch is not None:
                        self._step()
                except Exception as e:  # never let one bad batch stop the server
                    log.exception("engine step failed")
                    self._fail_running(APIError(500, f"internal error while generating: {e}", type="server_error"))

    def _wait_for_work(self) -> Optional[list]:
        with self._cv:
            while not self._stopping and not self._queue and self._batch is None:
                self._cv.wait()
            if self._stopping:
                for job in self._queue:
                    self._finish_error(job, APIError(503, "the server is shutting down", type="server_error"))
                self._queue.clear()
                return None
            if self._batch is None and self.batch_window > 0:
                deadline = time.perf_counter() + self.batch_window
                while len(self._queue) < self.max_batch_size and not self._stopping:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            room = self.max_batch_size - self.active
            admitted = []
            while self._queue and len(admitted) < room:
                job = self._queue.popleft()
                if not job.cancelled.is_set():
                    admitted.append(job)
            return admitted

    def _admit(self, jobs: list) -> None:
        now = time.perf_counter()
        groups = collections.OrderedDict()
        for job in jobs:
            job.admitted = now
            if self.metrics:
                self.metrics.observe("queue_seconds", now - job.submitted)
            groups.setdefault(job.compression, []).append(job)
        for comp, group in groups.items():
            try:
                self._admit_group(comp, group)
            except Exception as e:
                if isinstance(e, UserError):
                    err = APIError(400, str(e), param="compression")
                elif isinstance(e, (ValueError, TypeError)) and comp.options:  # an option value the method rejects
                    err = APIError(400, f"compression {comp.describe()} was rejected: {e}", param="compression.options")
                else:
                    log.exception("admitting a batch failed")
                    err = APIError(500, f"internal error: {e}", type="server_error")
                for job in group:
                    if not job.done and job not in (self._batch.keys if self._batch is not None else []):
                        self._finish_error(job, err)

    def _admit_group(self, comp: Compression, group: list) -> None:
        pred = self.predictor
        if pred.kind == "dynamic":
            # the position layout is the server's (--positions), not a request's
            pred.set_method(comp.method, comp.budget, positions=self.positions, **dict(comp.options))
        enc = pred.encode([j.request.image for j in group], [j.request.text for j in group])
        rows = []
        for b, job in enumerate(group):
            n_prompt = enc.prompt_tokens(b)
            room = self.context - n_prompt
            asked = job.request.max_tokens
            job.max_tokens = min(self.default_max_tokens, room) if asked is None else asked
            if job.max_tokens < 1 or n_prompt + job.max_tokens > self.context:
                self._finish_error(job, APIError(
                    400, f"this model's context is {self.context} tokens; the prompt takes {n_prompt} "
                         f"(visual tokens after compression included) and {asked or 1} more were asked for; "
                         "shorten the text, lower max_tokens or compress harder", param="messages",
                    code="context_length_exceeded"))
                continue
            info = dict(enc.item(b),
                        timings={"queue": job.admitted - job.submitted, **enc.timings}, admitted_with=len(group))
            if job.request.return_picture:
                t_pic = time.perf_counter()
                info["picture"] = self._picture(job, enc, b)
                info["timings"]["picture"] = time.perf_counter() - t_pic
            job.timings = dict(info["timings"])
            job.started_info = info
            rows.append(b)
        if not rows:
            return
        t0 = time.perf_counter()
        batch = pred.start(enc, rows, keys=[group[b] for b in rows])
        prefill = time.perf_counter() - t0
        for b in rows:
            job = group[b]
            job.started_info["visual_tokens"] = enc.visual_tokens(b)  # FastV's count is known after its prefill
            job.timings["prefill"] = prefill
            job.started_info["timings"]["prefill"] = prefill
            job.emit(("started", job.started_info))
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.join(batch)

    def _picture(self, job: Job, enc, b: int) -> Optional[str]:
        img = self.predictor.picture(job.request.image, enc, b)
        if img is None:
            return None
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def _step(self) -> None:
        batch = self._batch
        if self.metrics:
            self.metrics.observe("batch_size", len(batch))
        live, tokens = [], []
        for i, job in enumerate(batch.keys):
            job.batch_rows += len(batch)
            job.steps += 1
            if job.cancelled.is_set():
                job.done = True
                self._count_cancel()
                continue
            req = job.request
            tok = int(sample_next(batch.logits[i:i + 1], req.temperature, req.top_p, [job.rng])[0])
            if not self._accept(job, tok):
                live.append(i)
                tokens.append(tok)
        if not live:
            self._batch = None
            return
        batch.keep(live)
        batch.step(np.asarray(tokens, dtype=np.int64))

    def _accept(self, job: Job, tok: int) -> bool:
        """Add a sampled token to the job; emit what text is now certain. -> True when the job is done."""
        now = time.perf_counter()
        if job.first_token is None:
            job.first_token = now
        if tok == self.eos and not job.request.ignore_eos:
            self._finish(job, "stop", self._text(job).strip())
            return True
        job.ids.append(tok)
        text = self._text(job)
        cut = _first_stop(text, job.request.stop)
        if cut is not None:
            self._finish(job, "stop", text[:cut].strip())
            return True
        if len(job.ids) >= job.max_tokens:
            self._finish(job, "length", text.strip())
            return True
        safe = _certain_prefix(text, job.request.stop)
        if len(safe) > len(job.emitted) and safe.startswith(job.emitted):
            job.emit(("delta", safe[len(job.emitted):]))
            job.emitted = safe
        return False

    def _text(self, job: Job) -> str:
        return self.predictor.tok.llm.decode(job.ids).lstrip()

    def _finish(self, job: Job, reason: str, text: str) -> None:
        now = time.perf_counter()
        if text.startswith(job.emitted) and len(text) > len(job.emitted):
            job.emit(("delta", text[len(job.emitted):]))
        elif not text.startswith(job.emitted):  # cannot happen with a prefix-stable decoder; say so if it does
            log.warning("job %d: streamed text %r is not a prefix of the answer %r", job.id, job.emitted, text)
        job.done = True
        job.timings.update(decode=now - (job.first_token or now), total=now - job.submitted,
                           first_token=(job.first_token or now) - job.submitted)
        if self.metrics:
            self.metrics.inc("completion_tokens", len(job.ids))
        job.emit(("done", {"finish_reason": reason, "text": text, "completion_tokens": len(job.ids),
                           "timings": job.timings, "mean_batch_size": job.batch_rows / max(job.steps, 1)}))

    def _finish_error(self, job: Job, err: APIError) -> None:
        job.done = True
        job.emit(("error", err))

    def _fail_running(self, err: APIError) -> None:
        batch, self._batch = self._batch, None
        for job in (batch.keys if batch is not None else []):
            if not job.done:
                self._finish_error(job, err)

    def _count_cancel(self) -> None:
        if self.metrics:
            self.metrics.inc("requests_cancelled")


def _first_stop(text: str, stops: list) -> Optional[int]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _certain_prefix(text: str, stops: list) -> str:
    """The part of the text later tokens cannot change: without trailing whitespace (answers are
    stripped), without a trailing incomplete character (U+FFFD from a partial byte sequence), and
    without a tail that could be the start of a stop string."""
    t = text.rstrip()
    while t.endswith("\ufffd"):
        t = t[:-1]
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(t)), 0, -1):
            if t.endswith(s[:k]):
                hold = max(hold, k)
                break
    return t[:len(t) - hold]
