"""pytest fixtures for a project's tests (with pytest-django).

Load it in the project's root ``conftest.py``::

    pytest_plugins = ["django_bgtasks.pytest_plugin"]

then::

    def test_signup_sends_a_welcome(bgtasks):
        user = sign_up("ada@example.com")
        bgtasks.assert_enqueued(send_welcome, args=[user.pk])
        [result] = bgtasks.run_jobs()
        assert result.return_value == {"sent": True}

pytest refuses ``pytest_plugins`` in a conftest.py below the root one (and
one in a test module loads the plugin for the whole session): to use the
fixture in one module only, import it there instead
(``from django_bgtasks.pytest_plugin import bgtasks``).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def bgtasks(db):
    """A :class:`django_bgtasks.testing.BackgroundJobs`: ``.run_jobs()``,
    ``.enqueued()``, ``.assert_enqueued()`` and ``.assert_not_enqueued()``
    on the default database, inside the test's transaction (it takes
    pytest-django's ``db`` fixture)."""
    # Imported here: the plugin loads before Django is set up.
    from django_bgtasks.testing import BackgroundJobs

    return BackgroundJobs()
