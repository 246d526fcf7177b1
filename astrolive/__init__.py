"""The composition root and command line of astrolive."""
