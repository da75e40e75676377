from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "testproject.bench"
    label = "bench"
    verbose_name = "Benchmarks"
