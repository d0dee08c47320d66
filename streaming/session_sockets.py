"""A browser session's playground sockets end with the session.

Each session socket joins a channel-layer group named after its session (a hash of the session key,
which never reaches Redis in the clear). Logging out (`user_logged_out`, sent by the site's and the
admin's logout) tells that group on every gateway process through the Redis channel layer; each socket
then stops its run and closes with 4401. A session that ends otherwise (expired, deleted, invalidated
by a password change) is caught by the check each socket makes before every chat.
"""

import hashlib
import logging
from importlib import import_module

from channels.auth import get_user
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# The channel-layer message a session's sockets get when it ends (handled by
# PlaygroundConsumer.playground_session_ended).
SESSION_ENDED = "playground.session_ended"


def session_group(session_key: str) -> str:
    return "playground-session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


async def session_user(session_key: str):
    """The user the session logs in now (AnonymousUser once it has ended), read afresh from the store."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return await get_user({"session": store})


async def session_sockets_end(sender, request, user, **kwargs) -> None:
    """Receiver of `user_logged_out`: the logged-out session's sockets close."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    layer = get_channel_layer()
    if not session_key or layer is None:
        return
    try:
        await layer.group_send(session_group(session_key), {"type": SESSION_ENDED})
    except (OSError, RedisError) as exc:
        # Logging out must not fail with Redis; the sockets still refuse their next chat.
        logger.warning("could not tell a logged-out session's playground sockets: %s", type(exc).__name__)


def session_sockets_connect() -> None:
    user_logged_out.connect(session_sockets_end, dispatch_uid="playground-session-sockets-end")
