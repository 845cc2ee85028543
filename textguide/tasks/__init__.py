"""The tasks: one module each (data, queries, text baseline, selection metric, serving body), one protocol
(:class:`~textguide.tasks.base.Task`) and one plain dict of them. Adding a task means adding its module, its
line here, its head in :mod:`textguide.adapters` and its line in the shared tests' task list."""

from __future__ import annotations

from .base import Task, Toy
from .coupon import COUPON, CouponTask
from .outfit import OUTFIT, OutfitTask
from .recommend import RECOMMEND, SequenceTask

TASKS: dict[str, Task] = {"recommend": RECOMMEND, "outfit": OUTFIT, "coupon": COUPON}

__all__ = ["TASKS", "CouponTask", "OutfitTask", "SequenceTask", "Task", "Toy"]
