"""The version scheme (docs/internals/contributing.rst): PEP 440, in one
place, and the changelog's first section is that version."""

import re

from django_bgtasks import __version__
from tests.conftest import ROOT

# PEP 440's public versions in the shape this project uses:
# MAJOR.MINOR.PATCH, optionally a pre-release, then optionally .devN.
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)((a|b|rc)\d+)?(\.dev\d+)?$")


def test_the_version_is_pep_440_major_minor_patch():
    assert VERSION.match(__version__), __version__


def test_the_changelog_begins_with_this_version():
    changelog = (ROOT / "CHANGELOG.rst").read_text()
    first = re.search(r"^(\S+) \((unreleased|\d{4}-\d{2}-\d{2})\)$", changelog, re.M)
    assert first, "the changelog has no 'VERSION (DATE or unreleased)' section"
    version, when = first.groups()
    released = VERSION.match(__version__).group(6) is None
    base = __version__.split(".dev")[0]
    assert version == base
    # A .dev version is not released yet; a released one has its date.
    assert (when != "unreleased") is released
