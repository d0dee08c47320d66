"""The production server's websocket protocol: uvicorn's (websockets, sans-I/O) with two edges settled.

- A text frame that is not UTF-8 closes the socket with 1007 (invalid data) quietly; uvicorn logs each one
  as an error with a traceback, which lets any client write tracebacks into the log.
- The server reads frames up to uvicorn's --ws-max-size (16 MiB by default), raised to
  GATEWAY_MAX_BODY_BYTES when that is larger: every frame the gateway would accept reaches the consumer,
  which answers one above GATEWAY_MAX_BODY_BYTES with a 413 error frame and stays open. Larger frames end
  the socket with 1009 (message too big) before they are buffered.

`aigateway.server.GatewayHttpProtocol` hands websocket upgrades to this protocol.
"""

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        from django.conf import settings

        cap = settings.GATEWAY_MAX_BODY_BYTES
        if self.conn.max_message_size is not None and self.conn.max_message_size < cap:
            self.conn.max_message_size = cap

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent and not _is_utf8(self.frames):
            self.frames = []
            self.conn.send_close(CloseCode.INVALID_DATA, "text frame is not valid UTF-8")
            self.handle_parser_exception()  # tells the application, sends the close, ends the connection
            return
        super().send_receive_event_to_app()


def _is_utf8(frames: list[bytes]) -> bool:
    try:
        (frames[0] if len(frames) == 1 else b"".join(frames)).decode()
    except UnicodeDecodeError:
        return False
    return True
