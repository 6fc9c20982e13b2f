"""An OpenAI-compatible HTTP server with speculative decoding (``quickdraft serve``).

Needs the ``server`` extras (``pip install 'quickdraft[server]'``): FastAPI, uvicorn, pydantic,
prometheus-client.

    schemas.py     request bodies (pydantic)
    protocol.py    OpenAI's wire format as pure functions: options, responses, chunks, errors
    scheduler.py   one worker thread per engine, a bounded fair queue, cancellation, timeouts
    completions.py one request from submission to JSON response or server-sent events
    metrics.py     Prometheus metrics in the app's own registry
    middleware.py  API key, body size limit, request counting (pure ASGI)
    app.py         create_app() and run()
"""

from .app import create_app, run

__all__ = ["create_app", "run"]
