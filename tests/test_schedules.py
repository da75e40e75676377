"""Schedules: validation, firing with a controlled clock, misfires, sync."""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import override_settings

from django_bgtasks.maintenance.schedule_sync import InvalidSchedule, sync_schedules
from django_bgtasks.maintenance.scheduler import fire_due_schedules
from django_bgtasks.models import Job, MisfirePolicy, Schedule

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)  # a Monday


def make_schedule(**fields) -> Schedule:
    fields.setdefault("name", "test")
    fields.setdefault("task_path", "tests.tasks.record")
    if "interval" not in fields:
        fields.setdefault("cron", "*/5 * * * *")
    fields.setdefault("timezone", "UTC")
    now = fields.pop("now", T0)
    schedule = Schedule(**fields)
    schedule.full_clean()
    schedule.reschedule(now=now)
    schedule.save()
    return schedule


def fire(now) -> int:
    return fire_due_schedules(now=now)


def jobs_of(schedule):
    return list(schedule.jobs.order_by("scheduled_for"))


# Validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "cron", "is not a valid cron expression"),
        ({"cron": "* *"}, "cron", "A cron expression has 5 fields"),
        (
            {"cron": "", "interval": None},
            "cron",
            "either a cron expression or an interval",
        ),
        (
            {"cron": "* * * * *", "interval": timedelta(1)},
            "cron",
            "either a cron expression or an interval",
        ),
        ({"cron": "", "interval": timedelta(0)}, "interval", "longer than zero"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown time zone 'Mars/Olympus'"),
        (
            {"task_path": "os.system"},
            "task_path",
            "'os.system' is not a registered task",
        ),
        (
            {"queue_name": "nope"},
            "queue_name",
            "Queue 'nope' is not one of the backend's QUEUES",
        ),
        ({"priority": 500}, "priority", "priority must be a whole number"),
        ({"args": {"a": 1}}, "args", "must be a JSON list"),
        ({"kwargs": {"x": float("nan")}}, "kwargs", "nan is not a JSON number"),
        ({"end_at": T0, "start_at": T0}, "end_at", "The end must come after the start"),
    ],
)
def test_invalid_schedules_are_refused(fields, field, message):
    values = {
        "name": "bad",
        "task_path": "tests.tasks.record",
        "cron": "* * * * *",
        "timezone": "UTC",
        **fields,
    }
    with pytest.raises(ValidationError) as caught:
        Schedule(**values).full_clean()
    assert any(message in text for text in caught.value.message_dict[field]), (
        caught.value.message_dict
    )


def test_cron_xor_interval_is_a_database_constraint():
    with pytest.raises(IntegrityError), transaction.atomic():
        Schedule.objects.create(
            name="both", task_path="x", cron="* * * * *", interval=timedelta(1)
        )


# Firing -------------------------------------------------------------------


def test_a_due_schedule_fires_once_and_moves_on():
    schedule = make_schedule(
        cron="*/5 * * * *", kwargs={"label": "tick"}, queue_name="other", priority=7
    )
    assert schedule.next_run_at == T0

    assert fire(T0 - timedelta(seconds=1)) == 0
    assert fire(T0 + timedelta(seconds=1)) == 1
    assert fire(T0 + timedelta(seconds=2)) == 0  # same planned time: nothing more

    job = Job.objects.get()
    assert (job.schedule, job.scheduled_for, job.run_after) == (schedule, T0, T0)
    assert (job.task_path, job.kwargs) == ("tests.tasks.record", {"label": "tick"})
    assert (job.queue_name, job.priority) == ("other", 7)
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(minutes=5)
    assert schedule.total_run_count == 1
    assert schedule.last_run_at == T0 + timedelta(seconds=1)


def test_every_planned_time_within_the_grace_time_fires():
    schedule = make_schedule(cron="* * * * * */10")  # every 10 seconds
    assert fire(T0 + timedelta(seconds=35)) == 4
    assert [j.scheduled_for.second for j in jobs_of(schedule)] == [0, 10, 20, 30]


def test_an_interval_schedule():
    schedule = make_schedule(cron="", interval=timedelta(seconds=90))
    assert schedule.next_run_at == T0 + timedelta(seconds=90)
    fire(T0 + timedelta(minutes=10))  # missed: run once
    assert len(jobs_of(schedule)) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(seconds=90 * 7)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(MisfirePolicy.RUN_ONCE, [T0 + timedelta(hours=50)]), (MisfirePolicy.SKIP, [])],
)
def test_misfire_after_an_outage(policy, expected):
    schedule = make_schedule(cron="0 * * * *", misfire_policy=policy)
    back = T0 + timedelta(hours=50, minutes=5)  # two days without a scheduler
    fire(back)
    # run_once: one job for all missed times, for the latest one (12:00 +
    # 50 h, more than the grace time ago); skip: none.
    assert [job.scheduled_for for job in jobs_of(schedule)] == expected
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(hours=51)


def test_a_late_pass_within_the_grace_time_is_not_a_misfire():
    schedule = make_schedule(cron="0 * * * *", misfire_policy=MisfirePolicy.SKIP)
    fire(T0 + timedelta(seconds=30))
    assert [job.scheduled_for for job in jobs_of(schedule)] == [T0]


@pytest.mark.parametrize(
    ("day_before", "day"),
    [(datetime(2025, 3, 29, 12), 30), (datetime(2025, 10, 25, 12), 26)],
    ids=["spring-forward", "fall-back"],
)
def test_daily_job_runs_once_on_dst_days(day_before, day):
    paris = ZoneInfo("Europe/Paris")
    start = day_before.replace(tzinfo=paris)
    schedule = make_schedule(cron="30 2 * * *", timezone="Europe/Paris", now=start)
    # A scheduler pass every 10 minutes for two days.
    now = start
    while now < start + timedelta(days=2):
        fire(now)
        now += timedelta(minutes=10)
    fired_on = [job.scheduled_for.astimezone(paris) for job in jobs_of(schedule)]
    assert [moment.day for moment in fired_on] == [day, day + 1]


def test_no_second_job_for_a_planned_time_even_if_the_row_goes_back():
    schedule = make_schedule()
    fire(T0)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=T0)  # a stale edit
    assert fire(T0 + timedelta(seconds=5)) == 0
    assert len(jobs_of(schedule)) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(minutes=5)


def test_editing_the_expression_takes_effect_at_the_next_pass():
    schedule = make_schedule(cron="0 * * * *")
    fire(T0)
    schedule.cron = "30 * * * *"
    schedule.full_clean()
    schedule.reschedule(now=T0 + timedelta(minutes=1))
    schedule.save()
    fire(T0 + timedelta(minutes=31))
    assert [job.scheduled_for for job in jobs_of(schedule)] == [
        T0,
        T0 + timedelta(minutes=30),
    ]


def test_a_schedule_ends():
    schedule = make_schedule(cron="0 * * * *", end_at=T0 + timedelta(hours=1))
    fire(T0 + timedelta(minutes=1))
    fire(T0 + timedelta(hours=1, minutes=1))
    fire(T0 + timedelta(hours=5))
    assert len(jobs_of(schedule)) == 2
    schedule.refresh_from_db()
    assert schedule.next_run_at is None


def test_disabled_schedules_do_not_fire():
    schedule = make_schedule()
    schedule.disable()
    assert schedule.next_run_at is None
    assert fire(T0 + timedelta(hours=1)) == 0
    schedule.enable()
    assert schedule.next_run_at is not None


def test_a_task_gone_from_the_code_is_recorded_not_fatal():
    schedule = make_schedule()
    Schedule.objects.filter(pk=schedule.pk).update(task_path="tests.tasks.gone")
    assert fire(T0) == 0
    schedule.refresh_from_db()
    assert "tests.tasks.gone" in schedule.last_error
    assert schedule.next_run_at == T0 + timedelta(minutes=5)


def test_run_now_enqueues_without_moving_the_schedule():
    schedule = make_schedule()
    result = schedule.run_now()
    job = Job.objects.get(pk=result.id)
    assert job.schedule == schedule and job.scheduled_for is None
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0


def test_upcoming_times():
    schedule = make_schedule(cron="0 9 * * 1-5", timezone="Europe/Paris")
    upcoming = schedule.upcoming(5, now=T0)
    assert [
        moment.astimezone(schedule.zone).strftime("%a %H:%M") for moment in upcoming
    ] == ["Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00", "Mon 09:00"]


# Schedules declared in code -------------------------------------------------

DECLARED = {
    "every-5-min": {
        "task": "tests.tasks.record",
        "cron": "*/5 * * * *",
        "kwargs": {"label": "five"},
    },
    "heartbeat": {"task": "tests.tasks.add", "interval": 30, "args": [1, 2]},
}


@override_settings(BGTASKS={"SCHEDULES": DECLARED})
def test_sync_creates_then_is_idempotent():
    result = sync_schedules()
    assert sorted(result.created) == ["every-5-min", "heartbeat"]
    every = Schedule.objects.get(name="every-5-min")
    assert every.declared_in_code and every.enabled
    assert every.next_run_at is not None
    assert Schedule.objects.get(name="heartbeat").interval == timedelta(seconds=30)

    next_run = every.next_run_at
    again = sync_schedules()
    assert (again.created, again.updated, again.disabled) == ([], [], [])
    assert Schedule.objects.count() == 2
    every.refresh_from_db()
    assert every.next_run_at == next_run  # run state kept


def test_sync_updates_changes_and_disables_removed_schedules():
    with override_settings(BGTASKS={"SCHEDULES": DECLARED}):
        sync_schedules()
    changed = {"every-5-min": {**DECLARED["every-5-min"], "cron": "0 3 * * *"}}
    with override_settings(BGTASKS={"SCHEDULES": changed}):
        result = sync_schedules()
    assert result.updated == ["every-5-min"] and result.disabled == ["heartbeat"]
    every = Schedule.objects.get(name="every-5-min")
    assert every.cron == "0 3 * * *"
    assert every.next_run_at.hour == 3  # rescheduled for the new expression
    heartbeat = Schedule.objects.get(name="heartbeat")
    assert not heartbeat.enabled and not heartbeat.declared_in_code
    assert heartbeat.next_run_at is None

    with override_settings(BGTASKS={"SCHEDULES": DECLARED}):
        result = sync_schedules()
    assert "heartbeat" in result.updated
    assert Schedule.objects.get(name="heartbeat").enabled  # declared again


def test_sync_keeps_an_operators_disable():
    with override_settings(BGTASKS={"SCHEDULES": DECLARED}):
        sync_schedules()
        Schedule.objects.get(name="heartbeat").disable()
        sync_schedules()
    assert not Schedule.objects.get(name="heartbeat").enabled


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cron": "* * * * *"}, "'task' .* is required"),
        (
            {"task": "tests.tasks.add", "cron": "nope"},
            "cron: A cron expression has 5 fields",
        ),
        (
            {"task": "tests.tasks.add", "cron": "* * * * *", "timezone": "Nowhere"},
            "timezone: Unknown time zone 'Nowhere'",
        ),
        (
            {"task": "tests.tasks.nothing", "cron": "* * * * *"},
            "task_path: 'tests.tasks.nothing' is not a registered task",
        ),
        ({"task": "tests.tasks.add", "cron": "* * * * *", "args": [{1, 2}]}, "args"),
        ({"task": "tests.tasks.add", "every": 5}, "Unknown key\\(s\\) every"),
    ],
)
def test_invalid_declarations_are_refused(spec, message):
    with override_settings(BGTASKS={"SCHEDULES": {"broken": spec}}):
        with pytest.raises(InvalidSchedule, match=message):
            sync_schedules()
        from django.core import checks

        errors = [m for m in checks.run_checks() if m.id == "bgtasks.E006"]
        assert errors and all("Schedule 'broken'" in m.msg for m in errors)
    assert not Schedule.objects.exists()


@override_settings(BGTASKS={"SCHEDULES": DECLARED})
def test_sync_schedules_command(capsys):
    call_command("sync_schedules")
    assert "Created: every-5-min, heartbeat" in capsys.readouterr().out
    call_command("sync_schedules")
    assert "Schedules are up to date." in capsys.readouterr().out


# Robustness -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_broken_schedule_never_stops_the_others():
    healthy = make_schedule(name="healthy")
    broken = make_schedule(name="broken")
    # Stored values that no longer work (a zone gone from the system).
    Schedule.objects.filter(pk=broken.pk).update(timezone="Mars/Olympus")
    assert fire(T0 + timedelta(seconds=1)) == 1
    assert len(jobs_of(healthy)) == 1
    broken.refresh_from_db()
    assert broken.next_run_at is None
    assert "Unknown time zone 'Mars/Olympus'" in broken.last_error
    assert fire(T0 + timedelta(minutes=5, seconds=1)) == 1  # still going


def test_more_due_schedules_than_one_batch_all_fire():
    for number in range(130):
        make_schedule(name=f"s{number}")
    assert fire(T0 + timedelta(seconds=1)) == 130


def test_an_hourly_expression_keeps_real_time_through_a_repeated_hour():
    paris = ZoneInfo("Europe/Paris")
    # In UTC: Python adds to a local time on the wall clock.
    start = datetime(2025, 10, 26, 0, 30, tzinfo=paris).astimezone(UTC)
    schedule = make_schedule(cron="0 */1 * * *", timezone="Europe/Paris", now=start)
    now = start
    while now < start + timedelta(hours=5):
        fire(now)
        now += timedelta(minutes=10)
    planned = [job.scheduled_for for job in jobs_of(schedule)]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(planned))
    assert len(planned) == 5


def test_spring_forward_runs_at_the_jump():
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2025, 3, 29, 12, tzinfo=paris)
    schedule = make_schedule(cron="30 2 * * *", timezone="Europe/Paris", now=start)
    fire(start + timedelta(days=2))
    schedule.refresh_from_db()
    first = (
        Schedule(
            name="x",
            task_path="tests.tasks.add",
            cron="30 2 * * *",
            timezone="Europe/Paris",
        )
        .planned_times()
        .next_after(start)
    )
    assert first.astimezone(paris).strftime("%d %H:%M") == "30 03:00"


@override_settings(BGTASKS={"SCHEDULES": {
    "later": {"task": "tests.tasks.add", "cron": "0 * * * *",
              "timezone": "Europe/Paris", "start_at": "2030-01-01 09:00"},
}})  # fmt: skip
def test_declared_naive_times_are_read_in_the_schedules_zone():
    sync_schedules()
    schedule = Schedule.objects.get(name="later")
    assert schedule.start_at == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert schedule.next_run_at == schedule.start_at


def test_editing_the_end_of_an_interval_keeps_its_phase():
    spec = {"task": "tests.tasks.add", "interval": 3600}
    with override_settings(BGTASKS={"SCHEDULES": {"hourly": spec}}):
        sync_schedules()
    before = Schedule.objects.get(name="hourly").next_run_at
    later = {"hourly": {**spec, "end_at": datetime(2099, 1, 1, tzinfo=UTC)}}
    with override_settings(BGTASKS={"SCHEDULES": later}):
        assert sync_schedules().updated == ["hourly"]
    assert Schedule.objects.get(name="hourly").next_run_at == before


@pytest.mark.django_db(transaction=True)
def test_syncs_started_together_make_one_row_per_name():
    import threading

    from django.db import connection

    declared = {f"s{n}": {"task": "tests.tasks.add", "interval": 60} for n in range(15)}
    barrier = threading.Barrier(4)
    errors = []

    def sync():
        try:
            barrier.wait()
            sync_schedules()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    # Settings are process-wide: override them here, not in the threads.
    with override_settings(BGTASKS={"SCHEDULES": declared}):
        threads = [threading.Thread(target=sync) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert Schedule.objects.count() == 15


def test_a_second_job_for_one_planned_time_is_an_integrity_error():
    """The insert's own cursor reports database errors as Django's."""
    schedule = make_schedule()
    schedule.enqueue(scheduled_for=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        schedule.enqueue(scheduled_for=T0)
    assert Job.objects.filter(schedule=schedule).count() == 1


def test_a_failed_enqueue_dooms_the_callers_transaction():
    """As with the ORM: the caller cannot commit the rest without the job."""
    schedule = make_schedule()
    schedule.enqueue(scheduled_for=T0)
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            schedule.enqueue(scheduled_for=T0)
        assert transaction.get_rollback()
