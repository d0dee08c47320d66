"""Admin or CLI changes to routing data bump the config version so every gateway process reloads."""

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from aigateway.config_version import config_version_bump


def _bump_after_commit(**kwargs) -> None:
    transaction.on_commit(config_version_bump)


def connect_config_signals(*models) -> None:
    for model in models:
        post_save.connect(_bump_after_commit, sender=model, dispatch_uid=f"cfg-save-{model._meta.label}")
        post_delete.connect(_bump_after_commit, sender=model, dispatch_uid=f"cfg-delete-{model._meta.label}")


def connect_m2m_signal(through) -> None:
    m2m_changed.connect(_bump_after_commit, sender=through, dispatch_uid=f"cfg-m2m-{through._meta.label}")
