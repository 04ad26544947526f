"""Who may use a ``dicomweb`` endpoint: HTTP basic against salted password hashes, or bearer tokens.

```toml
[endpoints.web]
type = "dicomweb"
port = 8042
auth = { type = "basic", users_file = "web-users" }     # dicom-router passwd web-users NAME
# auth = { type = "bearer", tokens_file = "web-tokens" } # dicom-router token web-tokens NAME
```

Both files hold one ``name:hash`` line per user and never a secret in clear: a password as
``scrypt$n$r$p$salt$key`` (base64), a token as ``sha256$hex`` (tokens are random, 256 bits, so
an unsalted hash is enough). The files are read again when they change, so adding or removing
a user needs no reload. A password is checked with scrypt once; the outcome is remembered for
:data:`REMEMBER_SECONDS` keyed by a hash of the credentials, so a client sending many requests
pays for one scrypt, not one per request. Without ``auth`` (``type = "none"``) the endpoint
should listen on loopback or behind ``allowed_hosts``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from router.config.types import ConfigPath, StrictModel

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
REMEMBER_SECONDS = 600.0


class EndpointAuthConfig(StrictModel):
    type: Literal["none", "basic", "bearer"] = "none"
    users_file: ConfigPath | None = None
    tokens_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _complete(self) -> EndpointAuthConfig:
        if self.type == "basic" and self.users_file is None:
            raise ValueError('type = "basic" needs users_file (dicom-router passwd FILE NAME makes one)')
        if self.type == "bearer" and self.tokens_file is None:
            raise ValueError('type = "bearer" needs tokens_file (dicom-router token FILE NAME makes one)')
        return self

    @property
    def file(self) -> Path | None:
        return self.users_file if self.type == "basic" else self.tokens_file if self.type == "bearer" else None

    def file_problem(self) -> str | None:
        if self.file is None:
            return None
        try:
            entries = read_entries(self.file)
        except OSError as exc:
            return f"cannot read {self.file}: {exc.strerror or exc}"
        except ValueError as exc:
            return f"{self.file}: {exc}"
        return None if entries else f"{self.file} names no user"


class Refused(Exception):
    """No or wrong credentials: answer 401 with ``challenge``."""

    def __init__(self, reason: str, challenge: str):
        super().__init__(reason)
        self.challenge = challenge


@dataclass
class _Entries:
    mtime_ns: int
    size: int
    hashes: dict[str, str]


class Authenticator:
    """Checks a request's ``Authorization`` header; call :meth:`user` from a worker thread (scrypt is slow)."""

    def __init__(self, config: EndpointAuthConfig):
        self.config = config
        self._entries: _Entries | None = None
        self._remembered: dict[bytes, tuple[str, float]] = {}

    @property
    def required(self) -> bool:
        return self.config.type != "none"

    def user(self, authorization: str | None) -> str | None:
        """The authenticated user's name (None without ``auth``); raises :class:`Refused`."""
        if not self.required:
            return None
        scheme = "Basic" if self.config.type == "basic" else "Bearer"
        challenge = f'{scheme} realm="dicom-router"'
        if not authorization or not authorization.lower().startswith(scheme.lower() + " "):
            raise Refused(f"no {scheme} credentials", challenge)
        credentials = authorization[len(scheme) + 1 :].strip()
        remembered = self._recall(credentials)
        if remembered is not None:
            return remembered
        name = self._basic(credentials) if scheme == "Basic" else self._bearer(credentials)
        if name is None:
            raise Refused("credentials not accepted", challenge)
        self._remember(credentials, name)
        return name

    def _basic(self, credentials: str) -> str | None:
        try:
            name, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        stored = self._hashes().get(name)
        return name if stored is not None and verify_password(stored, password) else None

    def _bearer(self, token: str) -> str | None:
        digest = hash_token(token)
        for name, stored in self._hashes().items():
            if hmac.compare_digest(stored, digest):
                return name
        return None

    def _hashes(self) -> dict[str, str]:
        path = self.config.file
        assert path is not None  # the model requires a file for basic and bearer authentication
        stat = os.stat(path)
        if self._entries is None or (self._entries.mtime_ns, self._entries.size) != (stat.st_mtime_ns, stat.st_size):
            self._entries = _Entries(stat.st_mtime_ns, stat.st_size, read_entries(path))
            self._remembered.clear()
        return self._entries.hashes

    def _recall(self, credentials: str) -> str | None:
        key = hashlib.sha256(credentials.encode()).digest()
        found = self._remembered.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        self._hashes()  # a changed file forgets what was remembered
        found = self._remembered.get(key)
        return found[0] if found is not None else None

    def _remember(self, credentials: str, name: str) -> None:
        now = time.monotonic()
        if len(self._remembered) > 10_000:
            self._remembered = {k: v for k, v in self._remembered.items() if v[1] > now}
        self._remembered[hashlib.sha256(credentials.encode()).digest()] = (name, now + REMEMBER_SECONDS)


def read_entries(path: Path) -> dict[str, str]:
    """``name:hash`` lines (blank lines and ``#`` comments skipped)."""
    entries = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name or not stored.startswith(("scrypt$", "sha256$")):
                raise ValueError(f"line {number} is not 'name:scrypt$...' or 'name:sha256$...'")
            entries[name] = stored
    return entries


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(
        [
            "scrypt",
            str(SCRYPT_N),
            str(SCRYPT_R),
            str(SCRYPT_P),
            base64.b64encode(salt).decode(),
            base64.b64encode(key).decode(),
        ]
    )


def verify_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, key = stored.split("$")
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(actual, expected)


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def set_entry(path: Path, name: str, stored: str) -> None:
    """Add or replace ``name``'s line, keeping the file's other lines; the file is mode 0600."""
    if ":" in name or not name.strip():
        raise ValueError("a user name is not empty and has no ':'")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.partition(":")[0].strip() != name]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(kept + [f"{name}:{stored}"]) + "\n")
    os.replace(tmp, path)
