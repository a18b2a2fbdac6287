"""The OpenAI-compatible Batch API (``vbatch api``): files and batches over HTTP, run on a fleet.

Layout: ``serve`` (the service's process: the runner's, parent of the API's), ``apiserver``
and ``apiprocess`` (the API's process, from inside and from its parent), ``app`` (the routes),
``views`` (what the API shows of a batch), ``store`` (SQLite, its schema in ``migrations``),
``uploads`` (multipart bodies streamed to disk), ``objects`` (the API's shapes),
``validation`` (a batch's input, line by line), ``runner`` and ``drive`` (batches -> the
core's jobs over one shared dispatcher), ``auth`` (bearer keys), ``webhooks``, ``page`` (the
status page). The core never imports this package (tests/test_layers.py).

Nothing is imported here: the API's process starts as ``python -m vbatch._service.apiserver``,
and what ``serve`` needs (the fleet, the dispatcher) it must not load.
"""
