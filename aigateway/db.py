"""Database reads from async code on the API path.

The API handler runs without Django's request signals (see aigateway/asgi.py), so nothing closes a
connection at the end of a request: each read here runs in a worker thread and closes that
thread's connection when done. These reads only happen on cold caches.
"""

import asyncio

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def _run_and_close(function, *args):
    try:
        return function(*args)
    finally:
        close_old_connections()


async def db_read(function, *args):
    result = await sync_to_async(_run_and_close, thread_sensitive=False)(function, *args)
    # asgiref lets a thread that is already running finish and then returns its result, swallowing a
    # cancellation that arrived meanwhile (the client left): pass it on, or the request would run on
    # for a client that is gone, holding its concurrency slot.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
