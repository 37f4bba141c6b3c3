"""``efficientdet serve``: an HTTP detection service (FastAPI + uvicorn).

``app.create_app`` builds the ASGI app from a model loader; ``batcher.DynamicBatcher`` groups
concurrent requests into one forward pass; ``server.serve`` runs it with a clean shutdown.
Nothing here is imported by ``efficientdet --help``: FastAPI and torch load only when serving.
"""
