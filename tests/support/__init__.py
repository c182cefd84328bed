"""Helpers the test modules share: plain functions and constants, no fixtures (those live in
tests/conftest.py, which imports what it needs from here). A test module imports a helper from
here, never from another test module."""
