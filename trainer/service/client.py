"""The service's client, for `trainer submit` and `trainer jobs`: the standard library only (urllib), so the
commands work without the service's extra. Every failure is BadInput with one line (exit 2): an unreachable
server, a refused token, a refused request (the service's own line)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from trainer.errors import BadInput

SERVER_VARIABLE, TOKEN_VARIABLE = "TRAINER_SERVER", "TRAINER_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8100"
TIMEOUT = 60.0
RECONNECTS = 30  # a stream that drops is picked up again from its last event id this many times in a row


class Unreachable(BadInput):
    """No answer from the server (down, restarting, a wrong address)."""


class Client:
    def __init__(self, server: str | None = None, token: str | None = None):
        self.server = (server or os.environ.get(SERVER_VARIABLE) or DEFAULT_SERVER).rstrip("/")
        if not self.server.startswith(("http://", "https://")):
            raise BadInput(f"--server must be an http:// or https:// URL, got '{self.server}'")
        self.token = token if token is not None else os.environ.get(TOKEN_VARIABLE)

    def request(self, method: str, path: str, body=None, query: dict | None = None, data: bytes | None = None,
                headers: dict | None = None, raw: bool = False, timeout: float = TIMEOUT):
        url = self.server + path + ("?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
                                    if query else "")
        head = {"Accept": "application/json", **(headers or {})}
        if self.token:
            head["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data, head["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=head)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self.refused(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable(f"cannot reach the service at {self.server} ({reason}); start it with `trainer service`, "
                           f"or point --server / {SERVER_VARIABLE} at it") from None
        if raw:
            return response
        with response:
            payload = response.read()
        return json.loads(payload) if payload and "json" in response.headers.get("Content-Type", "") else \
            payload.decode("utf-8", "replace")

    def refused(self, error: urllib.error.HTTPError) -> BadInput:
        try:
            line = json.loads(error.read()).get("error") or error.reason
        except (ValueError, AttributeError, OSError):
            line = error.reason
        if error.code == 401 and not self.token:
            line = f"{line} (set {TOKEN_VARIABLE})"
        return BadInput(f"{self.server}: {line} (HTTP {error.code})")

    # --- the API ------------------------------------------------------------------------------------------

    def submit(self, body: dict) -> dict:
        return self.request("POST", "/jobs", body)

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/jobs/{job_id}")

    def jobs(self, **query) -> dict:
        return self.request("GET", "/jobs", query=query)

    def choose_lr(self, job_id: int, rate: str | float) -> dict:
        """Answer a job waiting at the lr_find gate: a number, or a suggestion's name (as given)."""
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            pass  # a suggestion's name, or something the service refuses with its own line
        return self.request("POST", f"/jobs/{job_id}/lr", {"lr": rate})

    def upload(self, archive: Path, recipe: str) -> dict:
        """An archive as the body of POST /datasets, streamed from the file."""
        size = archive.stat().st_size
        with open(archive, "rb") as f:
            return self.request("POST", "/datasets", query={"filename": archive.name, "recipe": recipe}, data=f,
                                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                                timeout=max(TIMEOUT, size / 2**20))

    def events(self, job_id: int, after: int = 0):
        """The job's events (dicts with id and kind), from after event `after` until the job has ended; a dropped
        stream is picked up again with Last-Event-ID, so none is missed or repeated."""
        last, drops = after, 0
        while True:
            try:
                response = self.request("GET", f"/jobs/{job_id}/events", headers={
                    "Accept": "text/event-stream", "Last-Event-ID": str(last)}, raw=True, timeout=TIMEOUT)
                with response:
                    for item in parse_stream(response):
                        last, drops = item["id"], 0
                        yield item
                if self.job(job_id)["state"] in ENDED:
                    return
            except (OSError, ValueError, Unreachable):  # dropped, or the service restarting: pick it up again
                pass
            drops += 1
            if drops > RECONNECTS:
                raise BadInput(f"lost the event stream of job {job_id} at {self.server}; run `trainer jobs follow "
                               f"{job_id}` again")
            time.sleep(min(5.0, 0.2 * drops))


ENDED = ("succeeded", "failed", "cancelled", "interrupted")


def parse_stream(lines):
    """Server-sent events from a byte stream: each event's data, parsed, with its id."""
    data, event_id = [], None
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                item = json.loads("\n".join(data))
                if event_id is not None:
                    item["id"] = int(event_id)
                yield item
            data, event_id = [], None
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
