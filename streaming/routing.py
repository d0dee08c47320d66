"""Websocket routes (the playground consumer)."""

websocket_urlpatterns: list = []
