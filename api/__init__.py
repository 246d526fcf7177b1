"""The REST API (aiohttp): thin views that authenticate, validate, call one use case, serialise."""
