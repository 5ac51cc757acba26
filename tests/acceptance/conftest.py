"""Fixtures of the acceptance tests; the helpers live in ``sagad_kit`` so that test modules
(and tests/faults) import them by a name no other conftest.py shadows."""

from sagad_kit import saga_db, sagad

__all__ = ["saga_db", "sagad"]
