"""Admin of the arena's votes: who voted on which pair of models and how, filtered by team, outcome and model, and
exported as CSV. Read-only: votes are cast in the playground and deleted by retention, never edited by hand."""

from django.contrib import admin
from django.http import HttpResponse
from django.utils import timezone

from accounts.admin import ReadOnlyAdmin
from accounts.arena import arena_votes_csv
from accounts.models import ArenaVote


class ArenaModelFilter(admin.SimpleListFilter):
    """Votes with a model on either side; the choices are the models voted on (deleted models included)."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        votes = ArenaVote.objects.order_by()
        names = set(votes.values_list("model_a", flat=True).distinct())
        names |= set(votes.values_list("model_b", flat=True).distinct())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(model_a=value) | queryset.filter(model_b=value)


@admin.action(description="Export selected votes as CSV", permissions=["view"])
def export_votes_csv(modeladmin, request, queryset):
    """The selected votes (with "select all", every vote the filters match) as a CSV download, oldest first."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="arena-votes-{stamp}.csv"'
    arena_votes_csv(queryset, response)
    return response


@admin.register(ArenaVote)
class ArenaVoteAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "team", "model_a", "model_b", "outcome", "turn", "run", "battle_id"]
    fields = [
        "battle_id",
        "created_at",
        "user",
        "team",
        "run",
        "turn",
        "prompt_hash",
        "model_a",
        "model_b",
        "outcome",
        "request_id_a",
        "request_id_b",
    ]
    list_filter = ["team", "outcome", ArenaModelFilter]
    date_hierarchy = "created_at"
    search_fields = ["battle_id", "request_id_a", "request_id_b", "prompt_hash"]
    list_select_related = ["user", "team", "run"]
    actions = [export_votes_csv]
