"""Re-encrypting stored provider secrets under the first key of GATEWAY_PROVIDER_SECRET_KEY.

Every encrypted column is covered: the API key, the proxy URL (it may carry credentials) and the client
certificate's private key. The plaintext does not change, so routes and upstream clients are left as
they are: only the ciphertext columns are rewritten, row by row, and a row edited meanwhile (admin saved
a new secret) is left to that edit.
"""

from dataclasses import dataclass, field

from django.db.models import Q

from providers.models import Provider
from providers.secrets import SecretUndecryptable, secret_reencrypt

SECRET_COLUMNS = ("api_key_encrypted", "proxy_url_encrypted", "client_key_encrypted")


@dataclass
class SecretRotation:
    rotated: list[str] = field(default_factory=list)
    undecryptable: list[str] = field(default_factory=list)
    changed_meanwhile: list[str] = field(default_factory=list)


def provider_secrets_rotate() -> SecretRotation:
    """Each provider with a stored secret, by name: rotated (all its secrets re-encrypted), undecryptable
    (one of them decrypts with no configured key: the row is left whole), or changed meanwhile."""
    result = SecretRotation()
    has_secret = Q()
    for column in SECRET_COLUMNS:
        has_secret |= ~Q(**{column: ""})
    rows = Provider.objects.filter(has_secret).order_by("name").values_list("pk", "name", *SECRET_COLUMNS)
    for pk, name, *tokens in rows:
        read = dict(zip(SECRET_COLUMNS, tokens, strict=True))
        try:
            rotated = {column: secret_reencrypt(token) for column, token in read.items() if token}
        except SecretUndecryptable:
            result.undecryptable.append(name)
            continue
        # Compare-and-set: only the ciphertexts this run read are replaced.
        updated = Provider.objects.filter(pk=pk, **read).update(**rotated)
        (result.rotated if updated else result.changed_meanwhile).append(name)
    return result
