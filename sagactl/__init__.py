"""sagactl: the operator console of saga_core (list, inspect, repair, watch).

Every operation is a ``saga_core`` call (``SagaAdmin``, ``SagaOrchestrator.notify``, the
schema functions); this package only parses arguments and renders results.
"""
