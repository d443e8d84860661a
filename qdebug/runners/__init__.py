"""Backends that run a model in float, simulated-quantized or through a vendor toolkit, behind one interface.

A new backend is one module with an `@register_backend` class plus its line below.
"""

from qdebug.runners import dumps, qdq, rockchip, sim  # noqa: F401  (register the built-in backends)
