"""Re-encrypting stored provider secrets under the first key of GATEWAY_PROVIDER_SECRET_KEY.

The plaintext does not change, so routes and upstream clients are left as they are: only the
ciphertext column is rewritten, row by row, and a row edited meanwhile (admin saved a new key) is
left to that edit.
"""

from dataclasses import dataclass, field

from providers.models import Provider
from providers.secrets import SecretUndecryptable, secret_reencrypt


@dataclass
class SecretRotation:
    rotated: list[str] = field(default_factory=list)
    undecryptable: list[str] = field(default_factory=list)
    changed_meanwhile: list[str] = field(default_factory=list)


def provider_secrets_rotate() -> SecretRotation:
    result = SecretRotation()
    rows = (
        Provider.objects.exclude(api_key_encrypted="").order_by("name").values_list("pk", "name", "api_key_encrypted")
    )
    for pk, name, token in rows:
        try:
            new_token = secret_reencrypt(token)
        except SecretUndecryptable:
            result.undecryptable.append(name)
            continue
        # Compare-and-set: only the ciphertext this run read is replaced.
        updated = Provider.objects.filter(pk=pk, api_key_encrypted=token).update(api_key_encrypted=new_token)
        (result.rotated if updated else result.changed_meanwhile).append(name)
    return result
