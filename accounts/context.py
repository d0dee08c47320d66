"""KeyContext: everything the hot path needs to know about a verified key, cached in process."""

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class KeyContext:
    key_id: int
    key_prefix: str
    key_name: str
    owner_id: int
    is_staff: bool
    tier_name: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    daily_tokens: int | None
    max_output_tokens: int | None
    max_compare_models: int
    # None = every enabled model is allowed.
    allowed_models: frozenset[str] | None = None
    expires_at: datetime | None = field(default=None)
    team_id: int | None = None
    # The budgets that apply to the key (its own, its owner's, its team's, the global ones): BudgetRef.
    budgets: tuple = ()
    # Seconds an answer stays in the response cache for this key (0 = the cache is off); see cache_ttl_for.
    cache_ttl: int = 0
    # What the request log keeps of this key's calls: "off", "metadata" or "full"; see log_level_for.
    log_bodies: str = "off"
    # Every stream of this key is resumable (see streaming.resumable); see resumable_for.
    resumable_streams: bool = False

    def may_use(self, model_name: str) -> bool:
        return self.allowed_models is None or model_name in self.allowed_models
