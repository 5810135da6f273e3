"""MAPE-K stage handlers: one module per stage, module-level functions ``(message, ctx, deps)``.

A handler uses only :mod:`x0tta6bl4.bus.ports` (no broker): the services bind it to NATS, the tests to
the in-memory bus (:mod:`x0tta6bl4.bus.memory`).
"""
