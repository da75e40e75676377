"""Sphinx configuration of django-bgtasks' documentation.

Build: ``scripts/docs`` (HTML in ``docs/_build/html``, warnings as errors)."""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The API reference imports the package, whose models need a configured
# Django: the test settings (SQLite, no server) serve.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.pop("DATABASE_URL", None)
django.setup()

from django_bgtasks import __version__  # noqa: E402

project = "django-bgtasks"
author = "The django-bgtasks authors"
copyright = "2026, The django-bgtasks authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {
    "description": "Background jobs for Django, with the database as broker",
    "fixed_sidebar": True,
}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# Links to Django's and Python's docs need the network at build time, which
# CI may not have: the inventories are read only when asked for.
intersphinx_mapping = {}
if os.environ.get("DOCS_INTERSPHINX"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "django": (
            "https://docs.djangoproject.com/en/stable/",
            "https://docs.djangoproject.com/en/stable/_objects/",
        ),
    }
nitpicky = False
