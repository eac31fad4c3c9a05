"""The reviewer's view: read-only audit pages over every execution and its executed notebooks,
served by the same FastAPI app as /orchestrator (`main.py`), plus the authentication that guards
every route of that app (`lib.web.auth`). `python -m lib.web` (or `make serve`) starts it."""
from __future__ import annotations


def install(app) -> None:
    """Mount the pages and guard every route of `app`."""
    from fastapi.responses import JSONResponse

    from lib.web import auth, pages

    app.include_router(pages.router)

    @app.middleware("http")
    async def authenticate(request, call_next):
        guard = auth.Guard(certs=getattr(request.app.state, "google_certs", None))
        server = request.scope.get("server") or (None, None)
        try:
            guard.check(request.headers.get("authorization"), server[0])
        except auth.Unauthorized as exc:
            return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)
