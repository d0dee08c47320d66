"""Management API view of the arena's leaderboards (accounts.arena): the overall board and one team's, for a key
holder (their owner's teams) or a logged-in browser (a user's teams, every team for staff)."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import UsageThrottle
from accounts.arena import arena_leaderboard, arena_team_resolve
from accounts.authentication import ApiKeyAuthentication
from accounts.context import KeyContext
from accounts.serializers import ApiErrorSerializer
from aigateway.errors import GatewayError

_STANDING_FIELDS = {
    "model": serializers.CharField(),
    "battles": serializers.IntegerField(),
    "wins": serializers.IntegerField(),
    "ties": serializers.IntegerField(),
    "bad": serializers.IntegerField(help_text="Votes that found both answers bad (rated as ties)."),
    "rating": serializers.FloatField(allow_null=True),
    "ci_low": serializers.FloatField(allow_null=True),
    "ci_high": serializers.FloatField(allow_null=True),
}
_LEADERBOARD = inline_serializer(
    "ArenaLeaderboard",
    {
        "team": serializers.CharField(allow_null=True, help_text="The team's name; null for the overall board."),
        "models": inline_serializer("ArenaStanding", _STANDING_FIELDS, many=True),
        "matrix": serializers.DictField(
            child=serializers.DictField(child=serializers.FloatField(allow_null=True)),
            help_text="Row model -> column model -> the share of their battles the row model won (ties half), "
            "null when they never met.",
        ),
    },
)


def _api_error(error: GatewayError) -> exceptions.APIException:
    """A domain error as the DRF exception the API's handler renders in the OpenAI error shape."""
    if error.status == 400 and error.param:
        return exceptions.ValidationError({error.param: [exceptions.ErrorDetail(error.message, code=error.code)]})
    exc = exceptions.APIException(error.message, code=error.code)
    exc.status_code = error.status
    return exc


class ArenaLeaderboardView(APIView):
    # A key (the relay's header), or the session of a logged-in browser; GET only, so no CSRF question arises.
    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    throttle_classes = [UsageThrottle]

    @extend_schema(
        operation_id="arena_leaderboard_retrieve",
        summary="Arena leaderboard",
        description="Bradley-Terry ratings (1000 + 400 * log10 strength, mean 1000) of the models voted on in the "
        "playground's blind arena, with 95% bootstrap intervals, counts and the win-rate matrix. Without `team`: "
        "every vote. With `team` (a team's name or id): the votes cast under that team, which must be one of the "
        "caller's (the key owner's or the user's teams; staff: any).",
        parameters=[OpenApiParameter("team", str, description="A team's name or id; omit for the overall board.")],
        responses={
            200: _LEADERBOARD,
            401: OpenApiResponse(ApiErrorSerializer, description="Missing, unknown or disabled key, no session."),
            404: OpenApiResponse(ApiErrorSerializer, description="No such team among the caller's."),
            429: OpenApiResponse(
                ApiErrorSerializer, description="More than GATEWAY_USAGE_API_RPM calls a minute; see Retry-After."
            ),
        },
        tags=["arena"],
    )
    def get(self, request):
        if isinstance(request.auth, KeyContext):
            user_id, is_staff = request.auth.owner_id, request.auth.is_staff
        else:
            user_id, is_staff = request.user.pk, request.user.is_staff
        try:
            team = arena_team_resolve(value=request.query_params.get("team"), user_id=user_id, is_staff=is_staff)
            board = arena_leaderboard(team_id=None if team is None else team.pk)
        except GatewayError as error:
            raise _api_error(error) from None
        return Response(board)
