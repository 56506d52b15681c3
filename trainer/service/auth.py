"""The service's bearer token: TRAINER_TOKEN from its environment (scripted deployments), or a token made on
first start in a file only its owner can read, printed once."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from trainer.errors import BadInput

TOKEN_VARIABLE = "TRAINER_TOKEN"
TOKEN_FILE = "token"
MIN_LENGTH = 16
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The pages keep the token in an HttpOnly cookie, not in the page's storage: EventSource (the live job page) and
# <img> cannot send an Authorization header but do send cookies, and no script on the page can read it back.
COOKIE = "trainer_token"
COOKIE_DAYS = 30
PAGE_HEADER = "X-Trainer-Page"  # what the pages' own requests carry (see app.authorized)


def service_token(state: Path) -> tuple[str, Path | None, bool]:
    """(the token, the file holding it or None when it came from TRAINER_TOKEN, whether it was just made)."""
    given = os.environ.get(TOKEN_VARIABLE)
    if given is not None:
        if len(given.strip()) < MIN_LENGTH:
            raise BadInput(f"{TOKEN_VARIABLE} is shorter than {MIN_LENGTH} characters; use a long random one, e.g. "
                           f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return given.strip(), None, False
    path = state / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if len(token) >= MIN_LENGTH:
            if path.stat().st_mode & 0o077:
                raise BadInput(f"{path} can be read by others; make it private with `chmod 600 {path}`, or remove "
                               f"it for a new token")
            return token, path, False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    state.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{TOKEN_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private from its first byte
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token, path, True


def owner_of(token: str) -> str:
    """What a job records of the token that submitted it: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def check_binding(host: str, auth: bool) -> None:
    if not auth and host not in LOOPBACK:
        raise BadInput(f"--no-auth on {host} would let anyone on the network run jobs; bind to 127.0.0.1, or "
                       f"drop --no-auth")
