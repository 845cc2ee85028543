"""Kept for imports written before :mod:`textguide.metrics` (the same functions, one implementation)."""

from .metrics import *  # noqa: F401,F403
from .metrics import __all__  # noqa: F401
