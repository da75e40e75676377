from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BgTasksConfig(AppConfig):
    name = "django_bgtasks"
    verbose_name = _("Background tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
        from .compat import BACKPORT

        if BACKPORT:
            # The backport registers its checks and setting_changed handler
            # from its own AppConfig; load them without asking projects to
            # add "django_tasks" to INSTALLED_APPS.
            import django_tasks.checks
            import django_tasks.signals  # noqa: F401
