"""Sign-in, the session cookie, CSRF tokens and the security headers of the web UI.

* Sign-in takes the server's access/secret key pair and asks the same :class:`Authenticator`
  that answers ``auth.login`` for a token (Basic credentials, as the SDK logs in). The token is
  the session: it travels in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` on https), so
  no script can read it and no other site can send it.
* Every state-changing request carries a CSRF token: ``HMAC-SHA256(session token, "csrf")``,
  put in each form (and in the ``X-CSRF-Token`` header of script requests). Another site can
  neither read the cookie nor compute the token, and a missing or wrong token is a 403.
  The sign-in form itself has a pre-session double-submit token (a random cookie that the form
  repeats), so nobody can sign a browser in with someone else's keys.
* Sign-out records the session as signed out (in the server's shared state, so every worker
  process refuses it, also after a restart, until its token ends) and clears the cookie.
* Every UI response has a Content-Security-Policy without inline script (scripts only from
  ``/static``), ``frame-ancestors 'none'``, ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hpcagent.server.auth import Authenticator
from hpcagent.server.fields import ApiFault
from hpcagent.server.files_http import TOKEN_COOKIE

# The session cookie has the name of the ClearML web UI's token cookie, which the files server
# also accepts (files_http.TOKEN_COOKIE): artifact and model links download with the session.
SESSION_COOKIE = TOKEN_COOKIE
LOGIN_COOKIE = "hpcagent_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME_S = 24 * 3600  # the shortest token lifetime Authenticator.login grants

# Plotly sets inline style attributes on the SVG it draws, hence 'unsafe-inline' for styles
# only; scripts come from /static alone. Debug samples may live on another files server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob: http: https:; connect-src 'self'; font-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class CsrfError(Exception):
    """A state-changing request without a valid CSRF token."""


def secure_headers(response: Response, *, cache: bool = False) -> Response:
    """Add the UI's security headers to ``response`` (``cache`` for static assets)."""
    for name, value in SECURITY_HEADERS.items():
        if cache and name == "Cache-Control":
            response.headers[name] = "private, max-age=3600"
        else:
            response.headers[name] = value
    return response


class UiSessions:
    """Sessions of the web UI on top of the server's :class:`Authenticator`."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def sign_in(self, access_key: str, secret_key: str, source: str) -> str:
        """A session token for the key pair; :class:`ApiFault` 401 when they are wrong, 429
        while ``source`` (the browser's address) must wait after failed tries."""
        basic = base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()
        return self.auth.login(f"Basic {basic}", SESSION_LIFETIME_S, source)

    def identity(self, request: Request) -> dict[str, Any] | None:
        """The identity of the request's session, or None (no, bad, expired or signed-out)."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token or self.auth.shared.signed_out(self._fingerprint(token)):
            return None
        try:
            return self.auth.verify(f"Bearer {token}")
        except ApiFault:
            return None

    def sign_out(self, request: Request, response: Response) -> None:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            now = time.time()
            self.auth.shared.sign_out(self._fingerprint(token), now + SESSION_LIFETIME_S, now)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")

    @staticmethod
    def set_session(request: Request, response: Response, token: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=SESSION_LIFETIME_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")

    @staticmethod
    def _fingerprint(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    # ---- CSRF --------------------------------------------------------------------------------

    @staticmethod
    def csrf_token(request: Request) -> str:
        """The CSRF token of the request's session ("" without a session)."""
        token = request.cookies.get(SESSION_COOKIE) or ""
        if not token:
            return ""
        return hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request, sent: str | None) -> None:
        """Raise :class:`CsrfError` unless ``sent`` (form field or header) is the session's."""
        expected = self.csrf_token(request)
        sent = sent or request.headers.get(CSRF_HEADER) or ""
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise CsrfError("missing or wrong CSRF token")

    @staticmethod
    def login_nonce(request: Request) -> str:
        """The sign-in form's double-submit token (reuses the cookie when there is one)."""
        return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)

    @staticmethod
    def set_login_nonce(request: Request, response: Response, nonce: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def check_login_nonce(request: Request, sent: str | None) -> None:
        cookie = request.cookies.get(LOGIN_COOKIE) or ""
        if not cookie or not hmac.compare_digest((sent or "").encode(), cookie.encode()):
            raise CsrfError("missing or wrong sign-in form token")
