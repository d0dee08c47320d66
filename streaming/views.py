"""Async HTTP views of the gateway."""

from django.http import JsonResponse


async def health(request):
    return JsonResponse({"status": "ok"})
