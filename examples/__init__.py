"""Runnable example sagas: an order saga and a model-deployment saga with in-memory fake
services. ``python -m examples`` (or ``bash scripts/demo.sh``) runs them."""
