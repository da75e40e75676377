"""``bgtasks_settings``: the ``BGTASKS`` setting with its defaults, kept
once read and read again when the setting changes."""

import pytest
from django.test import override_settings

from django_bgtasks.conf import DEFAULTS, bgtasks_settings


def test_a_value_kept_once_read_follows_the_setting_as_it_changes(settings):
    before = bgtasks_settings.MAX_PAYLOAD_BYTES  # read, and kept
    with override_settings(BGTASKS={"MAX_PAYLOAD_BYTES": 10}):
        read = bgtasks_settings.MAX_PAYLOAD_BYTES, bgtasks_settings.TIMEOUT
        assert read == (10, DEFAULTS["TIMEOUT"])  # the other one: its default
    restored = bgtasks_settings.MAX_PAYLOAD_BYTES
    assert restored == before
    # pytest-django's fixture sends setting_changed too.
    settings.BGTASKS = {"MAX_PAYLOAD_BYTES": 20}
    assert bgtasks_settings.MAX_PAYLOAD_BYTES == 20


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="Unknown django_bgtasks setting"):
        bgtasks_settings.MAX_ATEMPTS  # noqa: B018
