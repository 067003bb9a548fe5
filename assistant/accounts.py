"""Password accounts for a shared server: a users file of salted scrypt hashes, and login throttling.

Users file (``ASSISTANT_USERS_FILE``), one account a line, ``#`` starts a comment::

    alice:scrypt$16384$8$1$<salt, base64>$<hash, base64>

Add or change an account with ``python -m assistant.accounts add NAME --file users.txt`` (asks for
the password, or reads it from stdin with ``--password-stdin``). Passwords are never stored in clear.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1
USER_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
# Compared against when the user name is unknown, so an unknown name costs as much time as a known one.
_DUMMY_HASH = None


class AccountsError(ValueError):
    """A users file or an account that cannot be used; the message says what to fix."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(base64.b64decode(expected)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


def load_users(path: Path) -> dict[str, str]:
    """``{user name: password hash}`` from a users file; an unreadable or malformed file is an error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AccountsError(f"ASSISTANT_USERS_FILE: cannot read {path}: {exc.strerror or exc}") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not USER_NAME.match(name) or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise AccountsError(
                f"ASSISTANT_USERS_FILE: line {number} of {path} is not 'name:scrypt$...' "
                "(create entries with: python -m assistant.accounts add NAME --file FILE)"
            )
        users[name] = stored
    if not users:
        raise AccountsError(f"ASSISTANT_USERS_FILE: {path} has no accounts")
    return users


def save_user(path: Path, name: str, password: str) -> None:
    """Add ``name`` to the users file, or replace its password; the file is written atomically, mode 600."""
    if not USER_NAME.match(name):
        raise AccountsError("A user name is 1-64 letters, digits or . _ @ + -")
    if not password:
        raise AccountsError("The password is empty")
    path = Path(path)
    users = load_users(path) if path.exists() and path.read_text(encoding="utf-8").strip() else {}
    users[name] = hash_password(password)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{user}:{stored}\n" for user, stored in users.items()))
    os.replace(tmp, path)


@dataclass
class Accounts:
    """Who may log in with a password: the users file's accounts, or the one ``ASSISTANT_AUTH_PASSWORD`` user."""

    hashes: dict[str, str]

    @classmethod
    def from_settings(cls, settings) -> "Accounts | None":
        """None when password login is off (single-user local mode)."""
        users_file = getattr(settings, "users_file", None)
        if users_file and str(users_file).strip() not in ("", "."):
            return cls(load_users(Path(users_file)))
        if settings.auth_password:
            return cls({settings.local_user: hash_password(settings.auth_password)})
        return None

    def check(self, name: str, password: str) -> bool:
        global _DUMMY_HASH
        stored = self.hashes.get(name)
        if stored is None:
            _DUMMY_HASH = _DUMMY_HASH or hash_password("not a password")
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, stored)


@dataclass
class LoginThrottle:
    """Failed logins per key (an account, an address): after ``free_failures`` failures, each further
    attempt waits twice as long as the one before (1 s, 2 s, 4 s ... up to ``max_lock_s``). Attempts
    made while locked are refused without checking the password. Failures are forgotten after
    ``forget_after_s`` without one, and a key's count is cleared by a successful login."""

    free_failures: int = 5
    max_lock_s: float = 300.0
    forget_after_s: float = 900.0
    clock: callable = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def retry_after(self, *keys: str) -> float:
        """Seconds until an attempt for these keys may be checked (0 when it may be checked now)."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count and now - last > self.forget_after_s:
                self._failures.pop(key, None)
                continue
            if count >= self.free_failures:
                lock = min(2.0 ** (count - self.free_failures), self.max_lock_s)
                wait = max(wait, last + lock - now)
        return max(wait, 0.0)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)
        if len(self._failures) > 100_000:  # bound memory under a flood of made-up names
            oldest = sorted(self._failures, key=lambda k: self._failures[k][1])[:50_000]
            for key in oldest:
                self._failures.pop(key, None)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assistant.accounts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add an account or change its password")
    add.add_argument("name")
    add.add_argument("--file", required=True, type=Path, help="the users file (ASSISTANT_USERS_FILE)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    args = parser.parse_args(argv)
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass(f"Password for {args.name}: ")
    try:
        save_user(args.file, args.name, password)
    except AccountsError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.name} saved in {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
