"""``manage.py bgtasks``: look at and steer the jobs from a shell or a
script (``--json`` on each subcommand), in one database's jobs
(``--database``; by default the default backend's). What it shows and does
is ``django_bgtasks/console.py``; this parses and prints."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from django_bgtasks import console
from django_bgtasks.compat import InvalidTask
from django_bgtasks.databases import backend_database, job_database, job_databases
from django_bgtasks.db import database_now
from django_bgtasks.exceptions import DuplicateJob, TaskNotRegistered
from django_bgtasks.models import Job

VERBS = {
    "retry": "Put failed and cancelled jobs back to READY, due now.",
    "cancel": "Cancel jobs not started (and the workflow steps waiting for "
    "them); ask running ones to stop.",
    "run-now": "Make delayed READY jobs due now.",
    "delete": "Delete jobs, but running ones and those workflow steps wait for.",
}


def _plain(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


class Command(BaseCommand):
    help = (
        "Look at and steer django-bgtasks: status, jobs, show, retry, cancel, "
        "run-now, delete, purge, enqueue, top. Each takes --json."
    )

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="subcommand", required=True)

        def add(name, help_text):
            sub = commands.add_parser(name, help=help_text, description=help_text)
            sub.add_argument(
                "--json", action="store_true", help="Print JSON, for scripts."
            )
            if name != "enqueue":  # the task's backend says where its job goes
                sub.add_argument(
                    "--database",
                    default=None,
                    metavar="ALIAS",
                    help="The database whose jobs to look at or change "
                    "(default: the default task backend's).",
                )
            return sub

        add("status", "Queues (depth, lag, paused), workers and jobs by status.")
        listing = add("jobs", "List jobs, newest first.")
        self._add_filters(listing)
        listing.add_argument(
            "--limit", type=int, default=50, help="At most this many (default 50)."
        )
        show = add("show", "One job, whole: arguments, errors, why it waits.")
        show.add_argument("id", type=int)
        for verb, help_text in VERBS.items():
            sub = add(verb, help_text + " Give filters, or --all.")
            self._add_filters(sub)
            sub.add_argument(
                "--all", action="store_true", help="Every job (no filter given)."
            )
            sub.add_argument(
                "--dry-run",
                action="store_true",
                help="Count the jobs it would change, and change none.",
            )
        purge = add(
            "purge",
            "Cancel every job of a queue that has not started (the rows stay, "
            "CANCELLED; prune_jobs removes them).",
        )
        purge.add_argument("queue")
        purge.add_argument("--dry-run", action="store_true")
        enqueue = add("enqueue", "Enqueue a registered task with JSON arguments.")
        enqueue.add_argument("task", help="The task's path (module.function).")
        enqueue.add_argument(
            "--args",
            dest="arguments",
            default="[]",
            help="A JSON list of positional arguments.",
        )
        enqueue.add_argument(
            "--kwargs",
            dest="keyword_arguments",
            default="{}",
            help="A JSON object of keyword arguments.",
        )
        enqueue.add_argument("--queue", default=None)
        enqueue.add_argument("--priority", type=int, default=None)
        enqueue.add_argument(
            "--run-after",
            default=None,
            help="When it may run: ISO 8601, or a span from now (30m, 2h, 1d); "
            "default: now.",
        )
        top = add("top", "Throughput per queue, again every --interval seconds.")
        top.add_argument("--interval", type=float, default=2.0)
        top.add_argument(
            "--iterations",
            type=int,
            default=0,
            help="Stop after this many (default: until interrupted).",
        )

    @staticmethod
    def _add_filters(parser):
        parser.add_argument(
            "--id", dest="ids", type=int, action="append", default=[], metavar="ID"
        )
        parser.add_argument(
            "--status",
            dest="statuses",
            action="append",
            default=[],
            help="READY, WAITING, RUNNING, SUCCESSFUL, FAILED or CANCELLED "
            "(repeatable).",
        )
        parser.add_argument(
            "--task",
            dest="tasks",
            action="append",
            default=[],
            help="A task's path, or a prefix ending in '*' (repeatable).",
        )
        parser.add_argument(
            "--queue", dest="queues", action="append", default=[], help="(repeatable)"
        )
        parser.add_argument(
            "--since",
            default=None,
            help="Enqueued at or after: ISO 8601, or a span before now (30m, 2h, 1d).",
        )
        parser.add_argument("--until", default=None, help="Enqueued before.")

    def handle(self, *args, subcommand, **options):
        self.as_json = options["json"]
        try:
            self.using = job_database(options.get("database"))
            handler = getattr(self, "do_" + subcommand.replace("-", "_"), None)
            if handler is None:
                self.do_verb(subcommand, options)
            else:
                handler(options)
        except (ValueError, TaskNotRegistered) as exc:
            raise CommandError(str(exc)) from None

    # Output ------------------------------------------------------------------

    def emit(self, data, lines):
        if self.as_json:
            self.stdout.write(json.dumps(data, default=_plain, indent=2))
        else:
            for line in lines:
                self.stdout.write(line)

    def _filter(self, options) -> console.JobFilter:
        def at(name):
            value = options[name]
            return None if value is None else console.moment(value, self.using)

        return console.JobFilter(
            ids=tuple(options["ids"]),
            statuses=tuple(s.upper() for s in options["statuses"]),
            tasks=tuple(options["tasks"]),
            queues=tuple(options["queues"]),
            since=at("since"),
            until=at("until"),
        )

    # Subcommands -------------------------------------------------------------

    def do_status(self, options):
        data = console.status_data(self.using)
        lines = [f"Database: {data['database']}"] if len(job_databases()) > 1 else []
        lines.append("Queues:")
        for q in data["queues"]:
            lag = "-" if q["lag_seconds"] is None else f"{q['lag_seconds']:.1f}s"
            paused = "  PAUSED" + (f" by {q['paused_by']}" if q["paused_by"] else "")
            lines.append(
                f"  {q['name']:<20} ready {q['ready']:>8,}  due {q['due']:>8,}  "
                f"running {q['running']:>5}  waiting {q['waiting']:>6}  lag {lag}"
                + (paused if q["paused"] else "")
            )
        lines.append("Workers:")
        if not data["workers"]:
            lines.append("  none")
        for w in data["workers"]:
            lines.append(
                f"  {w['id']:<28} {w['host']}:{w['pid']}  busy {w['busy']}/"
                f"{w['slots']}  {w['state']}  heartbeat "
                f"{w['last_heartbeat_at'].isoformat()}"
                + ("" if w["alive"] else "  NOT ALIVE")
            )
        lines.append(
            "Jobs: "
            + ", ".join(f"{status} {n:,}" for status, n in data["jobs"].items())
        )
        others = [alias for alias in job_databases() if alias != self.using]
        if others:
            lines.append(f"Jobs are kept in {', '.join(others)} too (--database).")
        self.emit(data, lines)

    def do_jobs(self, options):
        if options["limit"] < 1:
            raise CommandError("--limit is at least 1.")
        jobs = self._filter(options).jobs(self.using).order_by("-pk")
        found = [console.job_data(job) for job in jobs[: options["limit"]]]
        lines = [
            f"{j['id']:>10}  {j['status']:<10} {j['queue']:<12} {j['task']}"
            f"  (attempts {j['attempts']}/{j['max_attempts']})"
            for j in found
        ] or ["No job matches."]
        self.emit(found, lines)

    def do_show(self, options):
        job = Job.objects.using(self.using).filter(pk=options["id"]).first()
        if job is None:
            raise CommandError(f"No job {options['id']}.")
        data = console.job_data(job, whole=True)
        lines = [f"{key}: {_text(value)}" for key, value in data.items()]
        self.emit(data, lines)

    def do_verb(self, verb, options):
        chosen = self._filter(options)
        if not chosen and not options["all"]:
            raise CommandError(
                f"Say which jobs to {verb}: give a filter (--status, --task, "
                f"--queue, --id, --since, --until) or --all."
            )
        jobs = chosen.jobs(self.using)
        matching = jobs.count()
        if options["dry_run"]:
            changes = console.would_change(verb, jobs)
            data = {
                "database": self.using,
                "matching": matching,
                "would_change": changes,
                "dry_run": True,
            }
            self.emit(
                data, [f"{matching} job(s) match; {verb} would change {changes}."]
            )
            return
        done = console.apply_verb(verb, jobs, by=console.shell_user("bgtasks"))
        data = {"database": self.using, "matching": matching, **done}
        self.emit(
            data,
            [
                f"{matching} job(s) matched; "
                + ", ".join(f"{key.replace('_', ' ')} {n}" for key, n in done.items())
                + "."
            ],
        )

    def do_purge(self, options):
        jobs = console.JobFilter(
            queues=(options["queue"],), statuses=("READY", "WAITING")
        ).jobs(self.using)
        if options["dry_run"]:
            count = jobs.count()
            self.emit(
                {
                    "database": self.using,
                    "queue": options["queue"],
                    "would_cancel": count,
                    "dry_run": True,
                },
                [f"Purging {options['queue']} would cancel {count} job(s)."],
            )
            return
        cancelled = jobs.cancel(by=console.shell_user("bgtasks")).cancelled
        self.emit(
            {"database": self.using, "queue": options["queue"], "cancelled": cancelled},
            [f"Cancelled {cancelled} job(s) of {options['queue']}."],
        )

    def do_enqueue(self, options):
        try:
            args = json.loads(options["arguments"])
            kwargs = json.loads(options["keyword_arguments"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--args and --kwargs are JSON: {exc}.") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise CommandError("--args is a JSON list, --kwargs a JSON object.")
        run_after = options["run_after"]
        before = timezone.now()
        try:
            result = console.enqueue(
                options["task"],
                args,
                kwargs,
                queue=options["queue"],
                priority=options["priority"],
                run_after=(
                    None
                    if run_after is None
                    else console.moment(run_after, self.using, ahead=True)
                ),
            )
        except (InvalidTask, TypeError) as exc:  # options or arguments refused
            raise CommandError(str(exc)) from None
        except DuplicateJob as exc:  # a unique task's on_duplicate="error"
            held = getattr(exc.result, "id", None)
            raise CommandError(f"{exc} (job {held})" if held else str(exc)) from None
        # A unique task's job that was there already comes back as it was.
        duplicate = result.enqueued_at < before
        data = {
            "id": int(result.id),
            "database": backend_database(result.backend),
            "task": options["task"],
            "duplicate": duplicate,
        }
        line = f"Enqueued job {result.id}."
        if duplicate:
            line = f"Not enqueued: job {result.id}, of the same unique key, waits."
        self.emit(data, [line])

    def do_top(self, options):
        interval = options["interval"]
        if interval <= 0:
            raise CommandError("--interval is more than 0 seconds.")
        since = database_now(self.using)
        count = 0
        while True:
            time.sleep(interval)
            until = database_now(self.using)
            figures = console.throughput_since(since, until, self.using)
            since = until
            data = [
                {
                    "database": self.using,
                    "queue": f.queue,
                    "per_second": round(f.per_second, 2),
                    "ended": f.ended,
                    "ready": f.ready,
                    "running": f.running,
                    "at": until,
                }
                for f in figures
            ]
            lines = [f"{until.isoformat()}  jobs ended per second, by queue"]
            lines += [
                f"  {f.queue:<20} {f.per_second:>9.1f}/s  ready {f.ready:>8,}  "
                f"running {f.running:>5}"
                + "".join(f"  {s.lower()} {n}" for s, n in sorted(f.ended.items()))
                for f in figures
            ]
            self.emit(data, lines)
            if self.as_json:
                self.stdout.write("")
            self.stdout.flush()
            count += 1
            if options["iterations"] and count >= options["iterations"]:
                return


def _text(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=_plain)
    if value is None:
        return "-"
    return _plain(value) if not isinstance(value, str | int) else str(value)
