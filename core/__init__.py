"""Shared foundations with no I/O of their own: settings, errors, logging, tokens, phones."""
