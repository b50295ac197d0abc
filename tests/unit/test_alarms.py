"""Alarm policies and their verdicts, on hand-built minutes and with hypothesis."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.domain.alarms import (
    DEFAULT,
    AlarmPolicy,
    Assessment,
    Level,
    Minute,
    assess,
    merged_overrides,
    policy_in_force,
    policy_of,
)
from tidings.domain.circuit import BreakerPolicy

# Defaults: warning at 5 failures in 15 min; critical at 10 dead in 30 min, or no
# success for 30 min with at least 10 failures since.
POLICY = AlarmPolicy()
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

# No example database: these tests must not write into the working tree.
quick = settings(database=None, max_examples=300, deadline=None)


def row(ago: float, *, failures: int = 0, successes: int = 0, dead: int = 0) -> Minute:
    """The minute that started ``ago`` minutes before ``NOW``."""
    return Minute(
        start=NOW - timedelta(minutes=ago),
        attempts=failures + successes,
        failures=failures,
        successes=successes,
        dead=dead,
    )


def failing(*agos: float, each: int = 1) -> list[Minute]:
    """Minutes of failures only, ``each`` failures in each."""
    return [row(ago, failures=each) for ago in agos]


# warning -------------------------------------------------------------------------------


def test_warning_at_exactly_the_threshold() -> None:
    """Five failures in the last 15 minutes, spread over minutes, raise the warning."""
    verdict = assess(POLICY, [*failing(14, 10, 5), row(1, failures=2)], NOW)
    assert verdict.failed_attempts == 5
    assert verdict.warning
    assert not verdict.critical
    assert verdict.level is Level.WARNING
    assert verdict.reason == "5 failed attempts in the last 15 min (warning at 5)"


def test_no_warning_one_below_the_threshold() -> None:
    verdict = assess(POLICY, failing(14, 10, 5, 1), NOW)
    assert verdict.failed_attempts == 4
    assert not verdict.warning
    assert verdict.level is None
    assert verdict.reason == ""


def test_failures_before_the_warning_window_do_not_count() -> None:
    """Failures 20 minutes ago, however many, are outside the 15-minute window."""
    minutes = [row(20, failures=100), row(17, failures=3), *failing(10, 5, 2, 1)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failed_attempts == 4
    assert not verdict.warning


def test_the_window_counts_every_minute_that_overlaps_it() -> None:
    """The window is [now - 15 min, now]. The minute starting 30 s before it ends
    30 s inside it, so it counts (the window may count up to a minute more than its
    length); the one starting 60 s before it ends exactly where the window begins,
    so it does not."""
    window_m = POLICY.warning_window_s / 60
    overlapping = assess(POLICY, [row(window_m + 0.5, failures=5)], NOW)
    assert overlapping.failed_attempts == 5
    assert overlapping.warning
    touching = assess(POLICY, [row(window_m + 1, failures=5)], NOW)
    assert touching.failed_attempts == 0
    assert not touching.warning


def test_warning_counts_failures_before_a_later_success() -> None:
    """The warning counts failed attempts in the window, whether or not the endpoint
    has succeeded since; only the silence alarm is ended by a success."""
    verdict = assess(POLICY, [*failing(10, 9, 8, 7, 6), row(1, successes=1)], NOW)
    assert verdict.warning
    assert verdict.failing_since is None


# critical: dead deliveries -------------------------------------------------------------


def test_critical_when_enough_deliveries_died_in_the_window() -> None:
    """Ten dead in 30 minutes are critical; the reason is the dead count, not the
    warning that the same failures raise."""
    minutes = [row(ago, failures=2, dead=2) for ago in (25, 20, 15, 10)]
    minutes += [row(1, failures=2, dead=2, successes=1)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.dead_deliveries == 10
    assert verdict.critical
    assert verdict.warning
    assert verdict.level is Level.CRITICAL
    assert verdict.reason == "10 deliveries died in the last 30 min (critical at 10)"


def test_not_critical_one_dead_below_the_threshold() -> None:
    minutes = [row(ago, failures=3, dead=3) for ago in (25, 20, 15)]
    verdict = assess(POLICY, [*minutes, row(1, successes=1)], NOW)
    assert verdict.dead_deliveries == 9
    assert not verdict.critical


def test_deaths_before_the_dead_window_do_not_count() -> None:
    """The dead window overlaps like the warning's: 30.5 minutes ago counts, 31 not."""
    window_m = POLICY.critical_dead_window_s / 60
    minutes = [row(window_m + 1, dead=50), row(window_m + 0.5, dead=4), row(5, dead=5)]
    verdict = assess(POLICY, [*minutes, row(1, successes=1)], NOW)
    assert verdict.dead_deliveries == 9
    assert not verdict.critical


def test_dead_reason_wins_over_silence() -> None:
    """When both critical rules hold, the reason given is the dead deliveries'."""
    minutes = [row(ago, failures=1, dead=1) for ago in range(35, 0, -1)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.dead_deliveries == 30
    assert verdict.failures_since == 35
    assert verdict.reason.startswith("30 deliveries died")


# critical: silence ---------------------------------------------------------------------


def test_critical_after_half_an_hour_of_failures_without_a_success() -> None:
    minutes = [row(45, successes=3), *failing(*range(30, 0, -1))]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failing_since == NOW - timedelta(minutes=30)
    assert verdict.failures_since == 30
    assert verdict.dead_deliveries == 0
    assert verdict.critical
    assert verdict.reason == "no success for 30 min, with 30 failed attempts (critical at 10)"


def test_silence_is_measured_from_the_start_of_the_first_failing_minute() -> None:
    """Failing since exactly ``critical_silence_s`` ago is enough; a minute later is not."""
    silence_m = POLICY.critical_silence_s / 60
    exactly = assess(POLICY, [row(silence_m, failures=10)], NOW)
    assert exactly.critical
    later = assess(POLICY, [row(silence_m - 1, failures=10)], NOW)
    assert later.failures_since == 10
    assert not later.critical


def test_a_success_after_the_failures_ends_the_silence() -> None:
    minutes = [*failing(*range(40, 1, -1), each=3), row(1, successes=1)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failing_since is None
    assert verdict.failures_since == 0
    assert not verdict.critical


def test_not_critical_when_the_failures_began_less_than_the_silence_ago() -> None:
    """A hundred failures a minute for 29 minutes, with no success anywhere in sight,
    are a warning, not (yet) a silence."""
    verdict = assess(POLICY, failing(*range(29, -1, -1), each=100), NOW)
    assert verdict.failing_since == NOW - timedelta(minutes=29)
    assert verdict.failures_since == 3000
    assert verdict.warning
    assert not verdict.critical
    assert verdict.reason.startswith("1600 failed attempts")  # 16 overlapping minutes


def test_not_critical_with_too_few_failures_in_a_long_silence() -> None:
    """No success for 35 minutes, but only nine failed attempts since."""
    minutes = [row(50, successes=1), *failing(35, 25, 15, each=3)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failing_since == NOW - timedelta(minutes=35)
    assert verdict.failures_since == 9
    assert not verdict.critical


def test_sparse_probes_count_toward_the_silence() -> None:
    """A suspended or open endpoint is only probed now and then: one failure every
    three minutes for 33 minutes makes ten, enough for critical though never enough
    for a warning."""
    verdict = assess(POLICY, failing(*range(33, 5, -3)), NOW)
    assert verdict.failures_since == 10
    assert verdict.failing_since == NOW - timedelta(minutes=33)
    assert verdict.failed_attempts == 4  # 15, 12, 9 and 6 minutes ago
    assert not verdict.warning
    assert verdict.critical
    assert verdict.level is Level.CRITICAL


# the failing streak --------------------------------------------------------------------


def test_no_minutes_no_streak() -> None:
    verdict = assess(POLICY, [], NOW)
    assert verdict == Assessment(
        warning=False,
        critical=False,
        failed_attempts=0,
        dead_deliveries=0,
        failing_since=None,
        failures_since=0,
        reason="",
    )


def test_the_streak_starts_after_the_last_minute_with_a_success() -> None:
    """A minute with both successes and failures ends the streak, and its failures
    are not part of it (which came last within the minute is not known)."""
    minutes = [*failing(12, 11), row(10, failures=5, successes=1), *failing(8, 7, each=2)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failing_since == NOW - timedelta(minutes=8)
    assert verdict.failures_since == 4


def test_a_mixed_latest_minute_means_no_streak() -> None:
    verdict = assess(POLICY, [*failing(5, 4, 3), row(2, failures=9, successes=1)], NOW)
    assert verdict.failing_since is None
    assert verdict.failures_since == 0


def test_minutes_without_results_do_not_break_the_streak() -> None:
    minutes = [row(9, successes=1), *failing(8), row(6), row(5), *failing(3)]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.failing_since == NOW - timedelta(minutes=8)
    assert verdict.failures_since == 2


# sums, not averages --------------------------------------------------------------------


def test_counts_are_sums_of_attempts_not_averages_of_ratios() -> None:
    """Four minutes that each failed every attempt (a 100 % ratio) make 4 failures:
    no warning. Minutes mostly succeeding but together failing 5 times do warn,
    though their average failure ratio is far lower."""
    all_failed = [row(ago, failures=1) for ago in (12, 9, 6, 3)]
    assert not assess(POLICY, all_failed, NOW).warning
    mostly_fine = [
        row(12, failures=1, successes=99),  # 1 %
        row(9, failures=2, successes=98),  # 2 %
        row(6, failures=1, successes=1),  # 50 %
        row(3, failures=1, successes=999),  # 0.1 %
    ]
    verdict = assess(POLICY, mostly_fine, NOW)
    assert verdict.failed_attempts == 5
    assert verdict.warning


def test_dead_deliveries_are_summed_across_minutes() -> None:
    minutes = [row(ago, dead=n, successes=50) for ago, n in ((28, 1), (20, 6), (2, 3))]
    verdict = assess(POLICY, minutes, NOW)
    assert verdict.dead_deliveries == 10
    assert verdict.critical


# policy-dependent wording --------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_s", "words"), [(60, "1 min"), (90 * 60, "90 min"), (3 * 3600, "3 h")]
)
def test_reasons_name_the_window_in_minutes_or_hours(window_s: float, words: str) -> None:
    policy = AlarmPolicy(critical_dead_window_s=window_s, critical_dead_deliveries=1)
    verdict = assess(policy, [row(0, dead=1)], NOW)
    assert verdict.reason == f"1 deliveries died in the last {words} (critical at 1)"


def test_lookback_covers_the_longest_window_and_its_overlap() -> None:
    policy = AlarmPolicy(warning_window_s=3600, critical_silence_s=7200)
    assert policy.lookback == timedelta(seconds=7200) + timedelta(minutes=2)
    assert POLICY.lookback == timedelta(minutes=32)


# properties ----------------------------------------------------------------------------

counts = st.integers(0, 4)


@st.composite
def minute_rows(draw: st.DrawFn) -> list[Minute]:
    """Up to 40 recorded minutes (one row per minute, as the store keeps them) in the
    last 70 minutes."""
    agos = draw(st.sets(st.integers(0, 70), max_size=40))
    return [
        row(ago, failures=draw(counts), successes=draw(counts), dead=draw(counts))
        for ago in sorted(agos)
    ]


policies = st.builds(
    AlarmPolicy,
    warning_failed_attempts=st.integers(1, 20),
    warning_window_s=st.integers(1, 40).map(lambda m: m * 60.0),
    critical_dead_deliveries=st.integers(1, 20),
    critical_dead_window_s=st.integers(1, 40).map(lambda m: m * 60.0),
    critical_silence_s=st.integers(1, 40).map(lambda m: m * 60.0),
    critical_silence_failed_attempts=st.integers(1, 20),
)


def _merged(minutes: list[Minute], extra: Minute) -> list[Minute]:
    """``minutes`` with ``extra``'s counts added to the row of its minute (or as a new
    row), keeping one row per minute."""
    for i, minute in enumerate(minutes):
        if minute.start == extra.start:
            added = replace(
                minute,
                attempts=minute.attempts + extra.attempts,
                failures=minute.failures + extra.failures,
                successes=minute.successes + extra.successes,
                dead=minute.dead + extra.dead,
            )
            return [*minutes[:i], added, *minutes[i + 1 :]]
    return [*minutes, extra]


@quick
@given(policy=policies, minutes=minute_rows(), data=st.data())
def test_the_order_of_the_minutes_does_not_matter(
    policy: AlarmPolicy, minutes: list[Minute], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(minutes))
    assert assess(policy, shuffled, NOW) == assess(policy, minutes, NOW)


@quick
@given(policy=policies, minutes=minute_rows(), data=st.data())
def test_a_success_after_every_failure_ends_the_silence(
    policy: AlarmPolicy, minutes: list[Minute], data: st.DataObject
) -> None:
    """Whatever came before, a success in a minute after the last failure leaves no
    failing streak: critical can then only come from dead deliveries."""
    last_failure = max((m.start for m in minutes if m.failures), default=NOW - timedelta(hours=2))
    latest_ago = int((NOW - last_failure) / timedelta(minutes=1))
    # Strictly after the last failure (-1: the next minute, when it is the current one).
    ago = data.draw(st.integers(-1, latest_ago - 1))
    after = assess(policy, _merged(minutes, row(ago, successes=1)), NOW)
    assert after.failing_since is None
    assert after.failures_since == 0
    assert after.critical == (after.dead_deliveries >= policy.critical_dead_deliveries)


@quick
@given(policy=policies, minutes=minute_rows(), ago=st.integers(-1, 80), more=st.integers(1, 50))
def test_more_failures_never_lower_the_counts(
    policy: AlarmPolicy, minutes: list[Minute], ago: int, more: int
) -> None:
    """Failures added to any minute (new or recorded) never lower the failed attempts
    in the window or in the streak, and never clear a warning."""
    before = assess(policy, minutes, NOW)
    after = assess(policy, _merged(minutes, row(ago, failures=more)), NOW)
    assert after.failed_attempts >= before.failed_attempts
    assert after.failures_since >= before.failures_since
    assert after.dead_deliveries == before.dead_deliveries
    assert after.warning or not before.warning


@quick
@given(policy=policies, minutes=minute_rows())
def test_the_verdict_follows_its_counts(policy: AlarmPolicy, minutes: list[Minute]) -> None:
    """The flags agree with the counts the assessment reports, and a reason is given
    exactly when an alarm is raised."""
    verdict = assess(policy, minutes, NOW)
    assert verdict.warning == (verdict.failed_attempts >= policy.warning_failed_attempts)
    silent = (
        verdict.failing_since is not None
        and NOW - verdict.failing_since >= timedelta(seconds=policy.critical_silence_s)
        and verdict.failures_since >= policy.critical_silence_failed_attempts
    )
    dying = verdict.dead_deliveries >= policy.critical_dead_deliveries
    assert verdict.critical == (silent or dying)
    assert bool(verdict.reason) == (verdict.warning or verdict.critical)


# Assessment.level ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("warning", "critical", "level"),
    [
        (False, False, None),
        (True, False, Level.WARNING),
        (False, True, Level.CRITICAL),
        (True, True, Level.CRITICAL),
    ],
)
def test_level_is_the_highest_alarm_raised(
    warning: bool, critical: bool, level: Level | None
) -> None:
    verdict = Assessment(
        warning=warning,
        critical=critical,
        failed_attempts=0,
        dead_deliveries=0,
        failing_since=None,
        failures_since=0,
        reason="",
    )
    assert verdict.level is level


# policy_of -----------------------------------------------------------------------------


def _json(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def test_no_overrides_is_the_default_instance() -> None:
    assert policy_of(None, None) is DEFAULT
    assert policy_of("", None) is DEFAULT
    assert AlarmPolicy() == DEFAULT


def test_tenant_fields_override_the_defaults() -> None:
    policy = policy_of(_json(warning_failed_attempts=3, suspend="alert_only"), None)
    assert policy.warning_failed_attempts == 3
    assert policy.suspend == "alert_only"
    assert policy == replace(DEFAULT, warning_failed_attempts=3, suspend="alert_only")


def test_endpoint_fields_override_the_tenants() -> None:
    tenant = _json(warning_failed_attempts=3, suspend="alert_only")
    policy = policy_of(tenant, _json(warning_failed_attempts=7, auto_resume=True))
    assert policy.warning_failed_attempts == 7
    assert policy.suspend == "alert_only"  # the tenant's, the endpoint does not set it
    assert policy.auto_resume
    assert policy.critical_silence_s == DEFAULT.critical_silence_s


def test_endpoint_fields_alone_override_the_defaults() -> None:
    assert policy_of(None, _json(drain_rate_per_s=5.0)) == replace(DEFAULT, drain_rate_per_s=5.0)


def test_unknown_stored_fields_are_ignored() -> None:
    """A field a newer version stored must not break this one."""
    policy = policy_of(_json(warning_failed_attempts=3, from_the_future=1), _json(shiny=True))
    assert policy == replace(DEFAULT, warning_failed_attempts=3)


def test_the_merged_policy_is_what_is_checked() -> None:
    """A tenant's cool-down above the default maximum is fine when the endpoint
    raises the maximum; an endpoint's maximum below the tenant's cool-down is not."""
    tenant = _json(breaker_cool_down_s=700)
    assert policy_of(tenant, _json(breaker_max_cool_down_s=900)).breaker_cool_down_s == 700
    with pytest.raises(ValueError, match="breaker_max_cool_down"):
        policy_of(_json(breaker_cool_down_s=120), _json(breaker_max_cool_down_s=60))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"breaker_cool_down_s": 700}, "breaker_max_cool_down"),
        ({"breaker_consecutive_failures": 0}, "breaker_consecutive_failures"),
        ({"breaker_failure_ratio": 1.5}, "breaker_failure_ratio"),
        ({"breaker_min_attempts": 0}, "breaker_min_attempts"),
        ({"breaker_window_s": 0}, "breaker_window"),
        ({"warning_window_s": 59}, "warning_window_s"),
        ({"critical_dead_window_s": 24 * 3600 + 1}, "critical_dead_window_s"),
        ({"critical_silence_s": 30}, "critical_silence_s"),
        ({"suspend": "never"}, "suspend"),
        ({"warning_failed_attempts": 0}, "warning_failed_attempts"),
        ({"critical_dead_deliveries": 0}, "critical_dead_deliveries"),
        ({"critical_silence_failed_attempts": 0}, "critical_silence_failed_attempts"),
        ({"drain_rate_per_s": 0}, "drain_rate_per_s"),
        ({"drain_rate_per_s": 10_001}, "drain_rate_per_s"),
    ],
)
def test_invalid_policies_are_refused_naming_the_field(
    fields: dict[str, object], named: str
) -> None:
    """The API shows the message to whoever set the field: it must say which."""
    with pytest.raises(ValueError, match=named):
        policy_of(_json(**fields), None)
    with pytest.raises(ValueError, match=named):
        policy_of(None, _json(**fields))


def test_the_window_bounds_are_inclusive() -> None:
    """A minute and a day are both allowed window lengths."""
    policy = AlarmPolicy(
        warning_window_s=60, critical_dead_window_s=24 * 3600, critical_silence_s=24 * 3600
    )
    assert policy.lookback == timedelta(days=1, minutes=2)


# merged_overrides ----------------------------------------------------------------------


def test_merging_into_nothing_sets_the_fields() -> None:
    stored = merged_overrides(None, {"warning_failed_attempts": 3})
    assert stored is not None
    assert orjson.loads(stored) == {"warning_failed_attempts": 3}


def test_merging_keeps_the_fields_not_changed() -> None:
    current = _json(warning_failed_attempts=3, suspend="alert_only")
    stored = merged_overrides(current, {"warning_failed_attempts": 4, "auto_resume": False})
    assert stored is not None
    assert orjson.loads(stored) == {
        "warning_failed_attempts": 4,
        "suspend": "alert_only",
        "auto_resume": False,  # False and 0 are values, not removals
    }


def test_none_removes_a_field() -> None:
    current = _json(warning_failed_attempts=3, suspend="alert_only")
    stored = merged_overrides(current, {"suspend": None, "drain_rate_per_s": None})
    assert stored is not None
    assert orjson.loads(stored) == {"warning_failed_attempts": 3}


def test_nothing_left_is_none() -> None:
    """No overrides are stored as None, which :func:`policy_of` reads as the defaults."""
    assert merged_overrides(_json(suspend="alert_only"), {"suspend": None}) is None
    assert merged_overrides(None, {"suspend": None}) is None
    assert merged_overrides(None, {}) is None


def test_merged_overrides_feed_policy_of() -> None:
    stored = merged_overrides(None, {"breaker_cool_down_s": 45, "breaker_window_s": 90})
    assert policy_of(stored, None).breaker.cool_down == timedelta(seconds=45)


# AlarmPolicy.breaker -------------------------------------------------------------------


def test_default_breaker_is_the_default_breaker_policy() -> None:
    assert DEFAULT.breaker == BreakerPolicy()


def test_breaker_maps_each_field() -> None:
    policy = AlarmPolicy(
        breaker_consecutive_failures=3,
        breaker_failure_ratio=0.25,
        breaker_min_attempts=20,
        breaker_window_s=90.5,
        breaker_cool_down_s=45,
        breaker_max_cool_down_s=900,
    )
    breaker = policy.breaker
    assert breaker.consecutive_failures == 3
    assert breaker.failure_ratio == 0.25
    assert breaker.min_attempts == 20
    assert breaker.window == timedelta(seconds=90, milliseconds=500)
    assert breaker.cool_down == timedelta(seconds=45)
    assert breaker.max_cool_down == timedelta(minutes=15)
    assert breaker.max_samples == BreakerPolicy().max_samples


def test_merged_overrides_keeps_fields_a_newer_version_stored() -> None:
    stored = '{"future_field": 1, "suspend": "alert_only"}'
    assert orjson.loads(merged_overrides(stored, {"suspend": None}) or "{}") == {"future_field": 1}


def test_the_policy_in_force_never_raises_when_levels_clash() -> None:
    """Each level passed its own check, but together the tenant's cool-down is above the
    endpoint's own maximum: the endpoint's fields win, and nothing raises."""
    tenant = '{"breaker_cool_down_s": 200, "warning_failed_attempts": 7}'
    endpoint = '{"breaker_max_cool_down_s": 100}'
    with pytest.raises(ValueError, match="breaker_max_cool_down"):
        policy_of(tenant, endpoint)
    assert policy_in_force(tenant, endpoint) == AlarmPolicy(breaker_max_cool_down_s=100)
    assert policy_in_force('{"warning_window_s": 1}', None) == DEFAULT
    assert policy_in_force(tenant, None).warning_failed_attempts == 7
