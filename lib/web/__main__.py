"""`python -m lib.web [--host H] [--port P]`: serve the pages and /orchestrator with uvicorn.

Binds 127.0.0.1 unless told otherwise (COMMANDER_WEB_HOST / --host); any other address requires
authentication on every route (COMMANDER_WEB_TOKEN, or Google ID tokens on Cloud Run)."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.web", description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("COMMANDER_WEB_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or os.environ.get("COMMANDER_WEB_PORT") or 8080))
    args = p.parse_args(argv)
    from lib.web.auth import is_loopback
    if not is_loopback(args.host) and not (os.environ.get("COMMANDER_WEB_TOKEN") or os.environ.get("K_SERVICE")):
        print(f"refusing to listen on {args.host} without authentication: set COMMANDER_WEB_TOKEN "
              "(or run on Cloud Run with COMMANDER_WEB_AUDIENCE and COMMANDER_WEB_ALLOWED)", file=sys.stderr)
        return 2
    os.environ["COMMANDER_WEB_HOST"] = args.host  # the guard reads the bind address from here
    import uvicorn
    print(f"reviewer pages on http://{args.host}:{args.port}/runs", file=sys.stderr)
    uvicorn.run("main:app", host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
