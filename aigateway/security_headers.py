"""`X-Content-Type-Options: nosniff` on every HTTP response, the API paths and static files included.

Static files skip Django's middleware, so the header is added here, to the response's start message: a
streamed body passes through untouched. The API paths get it from their own handler
(aigateway.api_handler). Site pages also get it, and the rest of their headers, from the middleware in settings
("Security"); a header already present is left alone.
"""

NOSNIFF = (b"x-content-type-options", b"nosniff")
HEADERS = (NOSNIFF,)


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
