"""Who may call the app: nobody unauthenticated once it listens beyond loopback.

The same app carries `/orchestrator`, which trades, so every route is guarded:

- on Cloud Run (`K_SERVICE` is set) the caller sends a Google-signed ID token; its audience must be
  the service URL (`COMMANDER_WEB_AUDIENCE`) and its email one of `COMMANDER_WEB_ALLOWED`;
- elsewhere, off loopback, the caller sends `Authorization: Bearer <COMMANDER_WEB_TOKEN>`;
- on loopback (the default bind, 127.0.0.1) nothing is asked unless a token is configured.

The certificates that verify Google's tokens are fetched from Google in production; tests pass
their own (a local RSA key), so nothing here needs the network to be tested.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Callable, Mapping

GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class Unauthorized(Exception):
    """The request carries no valid credential; the message says what is wrong (never the secret)."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def google_certs() -> Mapping[str, str]:
    """Google's current ID-token certificates (production only: needs the network)."""
    import google.auth.transport.requests
    from google.oauth2 import id_token
    return id_token._fetch_certs(google.auth.transport.requests.Request(), GOOGLE_CERTS_URL)


def verify_google_id_token(token: str, audience: str, allowed: set[str],
                           certs: Mapping[str, str] | None = None) -> dict:
    """The claims of a valid Google-signed ID token from an allowed caller, else Unauthorized."""
    from google.auth import exceptions as gexc
    from google.auth import jwt
    if not audience:
        raise Unauthorized("COMMANDER_WEB_AUDIENCE (the service URL) is not set: every call is refused")
    try:
        claims = jwt.decode(token, certs=certs if certs is not None else google_certs(), audience=audience)
    except (gexc.GoogleAuthError, ValueError) as exc:
        raise Unauthorized(f"the ID token is not valid: {exc}") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Unauthorized(f"the ID token was not issued by Google (iss={claims.get('iss')!r})")
    email = claims.get("email")
    if not email or claims.get("email_verified") is False or email not in allowed:
        raise Unauthorized(f"caller {email!r} is not among the allowed service accounts")
    return claims


class Guard:
    """Decides per request; built from the environment (or given explicitly in tests)."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 certs: Callable[[], Mapping[str, str]] | None = None):
        env = os.environ if env is None else env
        self.cloud_run = bool(env.get("K_SERVICE"))
        self.bind_host = env.get("COMMANDER_WEB_HOST", "127.0.0.1")
        self.token = env.get("COMMANDER_WEB_TOKEN") or ""
        self.audience = env.get("COMMANDER_WEB_AUDIENCE", "")
        self.allowed = {a.strip() for a in env.get("COMMANDER_WEB_ALLOWED", "").split(",") if a.strip()}
        self._certs = certs

    def required(self, server_host: str | None) -> bool:
        """Authentication is needed on Cloud Run, off loopback (configured bind or the socket the
        request came in on), and whenever a token is configured."""
        return (self.cloud_run or bool(self.token) or not is_loopback(self.bind_host)
                or not is_loopback(server_host))

    def check(self, authorization: str | None, server_host: str | None) -> None:
        if not self.required(server_host):
            return
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        credential = credential.strip()
        if self.cloud_run:
            verify_google_id_token(credential, self.audience, self.allowed,
                                   certs=self._certs() if self._certs else None)
            return
        if not self.token:
            raise Unauthorized("this server listens beyond loopback and COMMANDER_WEB_TOKEN is not set: "
                               "every call is refused")
        if not hmac.compare_digest(credential.encode(), self.token.encode()):
            raise Unauthorized("the bearer token is not valid")
