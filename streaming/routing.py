"""Websocket routes: the playground consumer, and the Responses API in OpenAI's WebSocket mode."""

from django.urls import path

from streaming.consumers import PlaygroundConsumer
from streaming.responses_socket import ResponsesSocketConsumer

websocket_urlpatterns = [
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
    path("v1/responses", ResponsesSocketConsumer.as_asgi()),
]
