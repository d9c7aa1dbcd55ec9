"""Who is asking: local accounts, API tokens, cookie sessions, and CSRF tokens for the pages' forms.

- ``Authorization: Bearer T`` — ``[dashboard] token`` (admin) or a user's API token (that user's role). A token
  request needs no CSRF token: browsers never attach it on their own.
- A cookie session after ``POST /login`` (argon2 password check). Every state-changing request from a browser
  (form or ``fetch``) carries the session's CSRF token, as a form field ``csrf`` or the ``X-CSRF-Token`` header.
- On a loopback-bound dashboard a request with neither is the local administrator ``local`` (as ``avn-node``
  commands on the same machine are); off loopback it is refused (401, or the login page for a page).

Passwords are kept as argon2id hashes, tokens as their sha256: a copied database reveals neither.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from avn_node.store.models import Role, User

LOCAL_USER = "local"
ROLE_RANK = {Role.VIEWER: 0, Role.RADIOLOGIST: 1, Role.ADMIN: 2}
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user that cannot be added (the message names why)."""


@dataclass(frozen=True)
class Principal:
    """The user a request acts as; ``via`` is ``token``, ``session`` or ``local``."""

    name: str
    role: Role
    via: str

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (IPv4 127/8, IPv6 ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(session: Session, name: str, role: Role, password: str) -> str:
    """Create the account; returns its API token (shown once, kept only as a digest)."""
    if not name or len(name) > 64 or name == LOCAL_USER or not name.isprintable():
        raise UserError(f'user name "{name}" must be 1–64 printable characters and not "{LOCAL_USER}"')
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise UserError(f'user "{name}" exists already')
    if len(password) < 8:
        raise UserError("the password needs at least 8 characters")
    token = secrets.token_urlsafe(32)
    session.add(User(name=name, role=role, password_hash=_hasher.hash(password), token_sha256=token_digest(token)))
    session.commit()
    return token


def check_password(session: Session, name: str, password: str) -> User | None:
    """The user when ``password`` is theirs, else None (same work either way, so timing tells nothing)."""
    user = session.scalars(select(User).where(User.name == name)).first()
    stored = user.password_hash if user is not None else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def principal(request: Request) -> Principal | None:
    """The request's user, or None when it has no valid credentials and the dashboard is off loopback."""
    state = request.app.state
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        if state.token and hmac.compare_digest(token.encode(), state.token.encode()):
            return Principal("token", Role.ADMIN, "token")
        with state.sessions() as session:
            user = session.scalars(select(User).where(User.token_sha256 == token_digest(token))).first()
        return Principal(user.name, Role(user.role), "token") if user else None
    name = request.session.get("user")
    if name:
        with state.sessions() as session:
            user = session.scalars(select(User).where(User.name == name)).first()
        if user is not None:
            return Principal(user.name, Role(user.role), "session")
        request.session.pop("user", None)
    if state.loopback:
        return Principal(LOCAL_USER, Role.ADMIN, "local")
    return None


def csrf_token(request: Request) -> str:
    """This browser session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse (403) a browser's state change whose CSRF token is missing or not this session's."""
    expected = request.session.get("csrf", "")
    if not expected or not submitted or not hmac.compare_digest(expected, submitted):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF token missing or wrong: reload the page and try again")


def require(request: Request, role: Role, submitted_csrf: str | None = None, changes: bool = False) -> Principal:
    """The request's user if it may act as ``role``; 401 without credentials, 403 with too small a role.

    ``changes``: the request changes state, so a browser's (session or local) needs its CSRF token."""
    who = principal(request)
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "login or an API token needed",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not who.may(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{who.name} is a {who.role}; this needs {role}")
    if changes and who.via != "token":
        check_csrf(request, submitted_csrf or request.headers.get("x-csrf-token"))
    return who
