"""Websocket routes (the playground consumer)."""

from django.urls import path

from streaming.consumers import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
]
