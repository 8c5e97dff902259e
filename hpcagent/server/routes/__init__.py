"""Endpoint handlers of the embedded server, one module per ClearML service.

Each module exports ``ROUTES: dict[str, Handler]`` (``"service.action" -> handler``).
"""
