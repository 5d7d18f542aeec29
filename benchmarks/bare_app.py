"""The baseline of every HTTP benchmark: a bare FastAPI app served exactly like cityos."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

app = FastAPI()


@app.get("/bare")
async def bare_get() -> Response:
    """The cheapest JSON answer the framework can give."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@app.post("/bare")
async def bare_post(request: Request) -> Response:
    """Read the body and answer 201, like a create without any work."""
    await request.body()
    return Response(status_code=201)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
