"""Settings of the test project and demo, read from the environment.

DATABASE_URL picks the database (default: SQLite in db.sqlite3 here), e.g.
``postgres://postgres@127.0.0.1:5432/bgtasks`` or
``mysql://root@127.0.0.1:3306/bgtasks``.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

SECRET_KEY = env("SECRET_KEY", default="django-insecure-bgtasks-demo-only")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_bgtasks",
    "testproject.demo",
    "testproject.bench",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "testproject.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
_engine = DATABASES["default"]["ENGINE"]
if _engine.endswith("sqlite3"):
    # Web process and workers write to one file: wait for the lock rather
    # than fail with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
elif _engine.endswith("mysql"):
    DATABASES["default"].setdefault("OPTIONS", {})["charset"] = "utf8mb4"
    DATABASES["default"]["TEST"] = {
        "CHARSET": "utf8mb4",
        "COLLATION": "utf8mb4_unicode_ci",
    }

TASKS = {
    "default": {
        "BACKEND": "django_bgtasks.backend.DatabaseBackend",
        # Any queue for the workers of bgtasks_bench's scale scenario,
        # which spreads jobs over a thousand queues.
        "QUEUES": []
        if env.bool("BGTASKS_ANY_QUEUE", default=False)
        else ["default", "images"],
    }
}

BGTASKS = {
    # The benchmark's no-op task is not in an app's ``tasks`` module, so the
    # demo's admin lists only the demo's tasks; bgtasks_bench names its
    # module here for the workers it starts.
    "TASK_MODULES": env.list("BGTASKS_TASK_MODULES", default=[]),
    # The demo's schedule: the worker fires it every 30 seconds.
    "SCHEDULES": {
        "demo-count-photos": {
            "task": "testproject.demo.tasks.count_photos",
            "interval": 30,
        },
    },
}

AUTH_PASSWORD_VALIDATORS = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
MEDIA_URL = "media/"
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "media")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
