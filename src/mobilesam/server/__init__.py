"""``mobilesam serve``: label images in the browser with clicks and boxes (needs the ``serve`` extra).

``create_app(model, images_dir=None, cache_size=16, ...)`` returns the FastAPI app; ``mobilesam serve``
runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
