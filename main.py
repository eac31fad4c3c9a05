"""HTTP trigger for Cloud Run (called by Cloud Scheduler): the same pipeline code, never a copy.

    POST /orchestrator  {"strategies": ["spy_macd_vixy"], "dryRun": true, "runReconcile": false,
                         "trigger": "scheduled"}
    GET  /healthz

Settings (mode, bus, broker, audit) come from the service's environment (COMMANDER_*), never from
the request body, and credentials come from the service account. Responses: 200 for a completed,
dry-run, disabled or closed-exchange run; 409 when another run holds the lock; 400 for bad input;
500 for a failed run. The body is the run's result (status, summary, orders, skipped, notebooks).
Over HTTP a body without `"dryRun": false` only plans: placing orders must be asked for.

The same app serves the reviewer's read-only pages (/runs, /executions/{id}, /notebooks/...,
/strategies; see lib/web). Every route is authenticated whenever the server listens beyond
loopback (lib/web/auth.py). Run locally with `make serve` (`python -m lib.web`, 127.0.0.1:8080).
"""
from __future__ import annotations

from typing import Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from lib import pipeline
from lib.progress import Progress
from lib.settings import resolve
from lib.web import install

app = FastAPI(title="Commander pipeline", version="0.1.0")
install(app)

STATUS_CODES = {pipeline.EXIT_OK: 200, pipeline.EXIT_USAGE: 400, pipeline.EXIT_LOCKED: 409}


@app.exception_handler(RequestValidationError)
async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400, not FastAPI's 422: the documented answer for bad input, naming the field."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    what = "is not a known field" if first.get("type") == "extra_forbidden" else first.get("msg", "is invalid")
    return JSONResponse({"status": "failed", "message": f"request body: field '{where}' {what}"}, status_code=400)


class OrchestratorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategies: Optional[list[str]] = None
    dryRun: bool = True  # over HTTP, trading must be asked for explicitly
    runReconcile: bool = True
    trigger: Literal["scheduled", "manual"] = "scheduled"
    asOf: Optional[str] = None


@app.get("/healthz")
def healthz() -> dict:
    settings = resolve()
    return {"ok": True, "mode": settings.mode, "bus": settings.bus.split("?")[0], "broker": settings.broker.split("?")[0]}


@app.post("/orchestrator")
def orchestrator(body: OrchestratorRequest) -> JSONResponse:
    import argparse

    from run_pipeline import check_dates
    settings = resolve()
    problem = check_dates(argparse.Namespace(as_of=body.asOf, window_start=None, broker=settings.broker))
    if problem:
        return JSONResponse({"status": "failed", "message": problem.replace("--as-of", "asOf")}, status_code=400)
    options = pipeline.Options(strategies=body.strategies, dry_run=body.dryRun, reconcile=body.runReconcile,
                               trigger=body.trigger, as_of=body.asOf)
    result = pipeline.run(settings, options, Progress(json_lines=True))
    return JSONResponse(result.to_dict(), status_code=STATUS_CODES.get(result.exit_code, 500))
