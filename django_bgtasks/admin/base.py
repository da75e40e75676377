from django.contrib import admin


class NoAddAdmin(admin.ModelAdmin):
    """Rows made by the system, never added by hand."""

    def has_add_permission(self, request):
        return False


class ReadOnlyAdmin(NoAddAdmin):
    """Rows that change only through their model verbs, never by hand."""

    def has_change_permission(self, request, obj=None):
        return False
