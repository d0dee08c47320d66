"""Database reads from async code on the API path.

The API handler runs without Django's request signals (see aigateway/asgi.py), so nothing closes a
connection at the end of a request: each read here runs in a worker thread and closes that
thread's connection when done. These reads only happen on cold caches.
"""

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def _run_and_close(function, *args):
    try:
        return function(*args)
    finally:
        close_old_connections()


async def db_read(function, *args):
    return await sync_to_async(_run_and_close, thread_sensitive=False)(function, *args)
