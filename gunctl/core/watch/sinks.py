"""Where events go besides events.jsonl: a webhook and a command, each on its own thread
behind a bounded outbox, so that a slow or failing receiver never stalls detection.

Webhook: one JSON POST per event (httpx), headers ``Idempotency-Key`` (the event's id, the
same on every retry: a receiver that saw it already can ignore it), ``X-Gunctl-Event`` (its
kind) and, with a secret, ``X-Gunctl-Signature: sha256=<hex HMAC-SHA256 of the body>`` (as
GitHub signs its webhooks). Connection errors, timeouts, 408, 429 and 5xx are retried with
backoff (0.5 s doubling, capped at 30 s, with jitter); any other answer is final.

Exec: ``shlex.split(CMD)`` run without a shell, the event's JSON on stdin, ``GUNCTL_EVENT``
(its kind) in the environment, 30 s at most each.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import random
import shlex
import subprocess
import threading
import time

log = logging.getLogger("gunctl")
SIGNATURE_HEADER = "X-Gunctl-Signature"
EXEC_TIMEOUT_S = 30.0
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.5, 30.0


def signature(secret: str, body: bytes) -> str:
    """The value of X-Gunctl-Signature for ``body``: a receiver recomputes it and compares
    with ``hmac.compare_digest``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempt: int, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_CAP_S) -> float:
    """Delay before retry ``attempt`` (0-based): exponential, capped, with +-25 % jitter."""
    return min(cap, first * 2**attempt) * random.uniform(0.75, 1.25)


class Sink:
    """A worker thread draining a bounded outbox; when full, the oldest event is dropped."""

    name = "sink"

    def __init__(self, outbox: int):
        self._queue: collections.deque = collections.deque()
        self._limit = outbox
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")  # monotonic time by which a closing sink gives up
        self.sent = self.failed = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"gunctl-{self.name}", daemon=True)
        self._thread.start()

    def put(self, event: dict) -> None:
        with self._cond:
            if len(self._queue) >= self._limit:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("%s: outbox full, %d event(s) dropped", self.name, self.dropped)
            self._queue.append(event)
            self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(timeout + 1)
        if self._queue:
            log.warning("%s: %d event(s) not delivered at exit", self.name, len(self._queue))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or time.monotonic() > self._deadline:
                    return
                event = self._queue[0]
            ok = self._deliver(event)
            with self._cond:
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()
            self.sent += ok
            self.failed += not ok

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` (less when closing runs out of time); False when out of time."""
        end = min(time.monotonic() + seconds, self._deadline)
        with self._cond:
            while time.monotonic() < end:
                self._cond.wait(end - time.monotonic())
        return time.monotonic() < self._deadline

    def _deliver(self, event: dict) -> bool:
        raise NotImplementedError


class WebhookSink(Sink):
    name = "webhook"

    def __init__(self, url: str, secret: str | None, timeout: float, retries: int, outbox: int):
        import httpx

        self.url, self.secret, self.retries = url, secret, retries
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)
        super().__init__(outbox)

    def _deliver(self, event: dict) -> bool:
        import httpx

        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": event["id"],
            "X-Gunctl-Event": event["event"],
            "User-Agent": "gunctl-watch",
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt and not self._wait(backoff(attempt - 1)):
                break
            try:
                answer = self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if answer.is_success:
                return True
            problem = f"HTTP {answer.status_code}"
            if answer.status_code not in (408, 429) and answer.status_code < 500:
                break  # the receiver refuses it: retrying would not help
        kind = event["event"]
        log.warning("webhook: event %s (%s) not delivered: %s", event["id"], kind, problem)
        return False

    def close(self, timeout: float) -> None:
        super().close(timeout)
        self._client.close()


class ExecSink(Sink):
    name = "exec"

    def __init__(self, command: str, outbox: int):
        self.argv = shlex.split(command)
        if not self.argv:
            from gunctl.errors import UsageError

            raise UsageError("--exec: an empty command")
        super().__init__(outbox)

    def _deliver(self, event: dict) -> bool:
        body = json.dumps(event).encode()
        env = {**os.environ, "GUNCTL_EVENT": event["event"]}
        try:
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            log.warning("--exec %s: %s", self.argv[0], exc.strerror or exc)
            return False
        try:
            process.communicate(body, timeout=EXEC_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            log.warning("--exec %s: killed after %.0f s", self.argv[0], EXEC_TIMEOUT_S)
            return False
        if process.returncode:
            log.warning("--exec %s: exit code %d", self.argv[0], process.returncode)
        return process.returncode == 0
