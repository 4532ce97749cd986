"""asyncio helpers of the cluster's shells."""

from __future__ import annotations

import asyncio


def stopping() -> bool:
    """Whether a CancelledError is this task's own cancellation (the node stops), not an etcd
    call cut short by another task closing the client's channel (grpc raises it for those too)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


__all__ = ["stopping"]
