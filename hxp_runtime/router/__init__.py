"""The hxp router: an OpenAI-compatible gateway that routes each request to the right model.

Modules: ``settings`` (its files), ``strategies`` (pure routing functions and the pipeline),
``breaker``, ``ratelimit``, ``upstream`` (the proxy's HTTP client), ``backends`` (live state and
monitors), ``auth`` and ``store`` (keys and usage in PostgreSQL), ``cache``, ``semantic``,
``metrics``, ``app`` (the gateway) and ``server`` (the daemon; ``hxp-router``).
"""
