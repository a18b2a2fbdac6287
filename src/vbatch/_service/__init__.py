"""The OpenAI-compatible Batch API (``vbatch api``): files and batches over HTTP, run on a fleet.

Layout: ``app`` (the routes), ``store`` (SQLite, its schema in ``migrations``), ``uploads``
(multipart bodies streamed to disk), ``objects`` (the API's shapes), ``validation`` (a batch's
input, line by line), ``runner`` (batches -> the core's jobs over one shared dispatcher),
``auth`` (bearer keys), ``webhooks``, ``page`` (the status page), ``serve`` (the process).
The core never imports this package (tests/test_layers.py).
"""

from .serve import ServiceSettings, serve

__all__ = ["ServiceSettings", "serve"]
