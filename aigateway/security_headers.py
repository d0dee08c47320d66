"""`X-Content-Type-Options: nosniff` on every HTTP response, the API paths and static files included.

The API paths (/v1/..., /health) and static files skip Django's middleware (see aigateway.asgi), so
the header is added here, to the response's start message: a streamed body passes through
untouched. Site pages also get it, and the rest of their headers, from the middleware in settings
("Security"); a header already present is left alone.
"""

HEADERS = ((b"x-content-type-options", b"nosniff"),)


class SecurityHeaders:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                missing = [header for header in HEADERS if header[0] not in present]
                if missing:
                    message = {**message, "headers": [*message.get("headers", ()), *missing]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)
