//! Schedules as operators write them: syntax, names, DST changes, catch-up and persisted marks.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on unexpected errors"
)]

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Australia::Melbourne;
use chrono_tz::Tz;
use schedules::{MarkStore, Schedule};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Every fire time in `[from, to)`.
fn fires(schedule: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut t = from - Duration::seconds(1);
    while let Some(next) = schedule.next_after(t) {
        if next >= to {
            break;
        }
        out.push(next);
        t = next;
    }
    out
}

fn local(times: &[DateTime<Utc>], zone: Tz) -> Vec<String> {
    times
        .iter()
        .map(|t| {
            t.with_timezone(&zone)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .collect()
}

#[test]
fn crontab_five_fields_fire_at_local_wall_clock_time() {
    let s = Schedule::parse("0 2 * * *", Melbourne).unwrap();
    let next = s.next_after(utc("2026-01-10T00:00:00Z")).unwrap();
    // 02:00 AEDT (UTC+11) on 11 January.
    assert_eq!(next, utc("2026-01-10T15:00:00Z"));
}

#[test]
fn six_fields_have_seconds_first() {
    let s = Schedule::parse("30 15 10 * * *", Tz::UTC).unwrap();
    assert_eq!(
        s.next_after(utc("2026-01-10T00:00:00Z")).unwrap(),
        utc("2026-01-10T10:15:30Z")
    );
}

#[test]
fn one_to_five_means_monday_to_friday() {
    let s = Schedule::parse("0 9 * * 1-5", Tz::UTC).unwrap();
    let week = fires(&s, utc("2026-11-16T00:00:00Z"), utc("2026-11-23T00:00:00Z"));
    let days: Vec<Weekday> = week.iter().map(|t| t.weekday()).collect();
    assert_eq!(
        days,
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri
        ]
    );
    assert!(week.iter().all(|t| t.hour() == 9 && t.minute() == 0));
}

#[test]
fn names_and_numbers_are_equivalent() {
    let from = utc("2026-01-01T00:00:00Z");
    let to = utc("2026-03-01T00:00:00Z");
    let groups: &[&[&str]] = &[
        &[
            "0 9 * * 1-5",
            "0 9 * * Mon-Fri",
            "0 9 * * MON,TUE,WED,THU,FRI",
            "0 0 9 * * mon-fri",
        ],
        &["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "@weekly"],
        &["0 0 1 * *", "@monthly"],
        &["0 * * * *", "@hourly"],
        &["0 0 * * *", "@daily", "@midnight"],
        &["15 6 * 2 *", "15 6 * feb *", "15 6 * FEB *"],
        &["0 12 * * 5-7", "0 12 * * FRI,SAT,SUN", "0 12 * * 0,5,6"],
    ];
    for group in groups {
        let expected = fires(&Schedule::parse(group[0], Tz::UTC).unwrap(), from, to);
        assert!(!expected.is_empty());
        for expression in &group[1..] {
            let got = fires(&Schedule::parse(expression, Tz::UTC).unwrap(), from, to);
            assert_eq!(got, expected, "{expression} vs {}", group[0]);
        }
    }
}

#[test]
fn restricted_day_of_month_and_day_of_week_match_either_as_crontab_does() {
    // The 1st of the month, and every Monday.
    let s = Schedule::parse("0 0 1 * 1", Tz::UTC).unwrap();
    let got = fires(&s, utc("2026-06-01T00:00:00Z"), utc("2026-06-16T00:00:00Z"));
    let days: Vec<u32> = got.iter().map(|t| t.day()).collect();
    assert_eq!(days, [1, 8, 15]); // 1 June 2026 is a Monday; 8 and 15 are Mondays.
    let got = fires(&s, utc("2026-07-01T00:00:00Z"), utc("2026-07-14T00:00:00Z"));
    let days: Vec<u32> = got.iter().map(|t| t.day()).collect();
    assert_eq!(days, [1, 6, 13]); // 1 July is a Wednesday.
}

#[test]
fn a_job_in_the_skipped_hour_runs_exactly_once_when_the_clock_jumps() {
    // Melbourne: 2026-10-04 02:00 AEST jumps to 03:00 AEDT.
    let s = Schedule::parse("30 2 * * *", Melbourne).unwrap();
    let got = fires(&s, utc("2026-10-01T14:00:00Z"), utc("2026-10-05T13:00:00Z"));
    assert_eq!(
        local(&got, Melbourne),
        [
            "2026-10-02 02:30 AEST",
            "2026-10-03 02:30 AEST",
            "2026-10-04 03:00 AEDT",
            "2026-10-05 02:30 AEDT",
        ]
    );
}

#[test]
fn a_job_in_the_repeated_hour_runs_exactly_once() {
    // Melbourne: 2026-04-05 03:00 AEDT falls back to 02:00 AEST; 02:30 happens twice.
    let s = Schedule::parse("30 2 * * *", Melbourne).unwrap();
    let got = fires(&s, utc("2026-04-02T13:00:00Z"), utc("2026-04-06T14:00:00Z"));
    assert_eq!(
        local(&got, Melbourne),
        [
            "2026-04-03 02:30 AEDT",
            "2026-04-04 02:30 AEDT",
            "2026-04-05 02:30 AEDT",
            "2026-04-06 02:30 AEST",
        ]
    );
    // Asking from inside the second pass does not fire it again.
    let second_pass = utc("2026-04-04T16:10:00Z"); // 02:10 AEST, after the first 02:30
    assert_eq!(
        local(&[s.next_after(second_pass).unwrap()], Melbourne),
        ["2026-04-06 02:30 AEST"]
    );
}

#[test]
fn an_hourly_job_runs_in_both_passes_of_the_repeated_hour() {
    let s = Schedule::parse("15 * * * *", Melbourne).unwrap();
    let got = fires(&s, utc("2026-04-04T14:00:00Z"), utc("2026-04-04T18:00:00Z"));
    assert_eq!(
        local(&got, Melbourne),
        [
            "2026-04-05 01:15 AEDT",
            "2026-04-05 02:15 AEDT",
            "2026-04-05 02:15 AEST",
            "2026-04-05 03:15 AEST",
        ]
    );
}

#[test]
fn catch_up_finds_runs_missed_during_an_outage() {
    let s = Schedule::parse("0 2 * * *", Tz::UTC).unwrap();
    let last = utc("2026-03-01T02:00:00Z");
    // Down from 1 March 03:00 to 4 March 01:00: three nightly runs were missed.
    assert_eq!(
        s.missed_since(last, utc("2026-03-04T01:00:00Z")),
        Some(utc("2026-03-02T02:00:00Z"))
    );
    // Restarted before the next run was due: nothing missed.
    assert_eq!(s.missed_since(last, utc("2026-03-02T01:59:59Z")), None);
}

#[test]
fn marks_persist_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedules.sqlite");
    let at = Utc.with_ymd_and_hms(2026, 5, 1, 2, 0, 0).unwrap();
    {
        let store = MarkStore::open(&path).unwrap();
        assert_eq!(store.last_run("nightly").unwrap(), None);
        store.record("nightly", "0 2 * * *", at).unwrap();
        store
            .record("nightly", "0 2 * * *", at + Duration::days(1))
            .unwrap();
    }
    let store = MarkStore::open(&path).unwrap();
    assert_eq!(
        store.last_run("nightly").unwrap(),
        Some(at + Duration::days(1))
    );
    assert_eq!(store.last_run("other").unwrap(), None);
}

#[test]
fn marks_in_an_unwritable_place_are_an_error_naming_the_file() {
    let err =
        MarkStore::open(std::path::Path::new("/nonexistent/dir/schedules.sqlite")).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/schedules.sqlite"),
        "{err}"
    );
}

#[test]
fn invalid_expressions_are_rejected_with_position_and_reason() {
    let cases: &[(&str, usize, Option<&str>, &str)] = &[
        ("0 25 * * *", 3, Some("hour"), "25 is out of range 0-23"),
        ("60 * * * *", 1, Some("minute"), "60 is out of range 0-59"),
        ("0 0 * * 8", 9, Some("day-of-week"), "8 is out of range 0-7"),
        (
            "0 0 * * Mon-Fry",
            13,
            Some("day-of-week"),
            "\"Fry\" is neither",
        ),
        (
            "0 0 0 * *",
            5,
            Some("day-of-month"),
            "0 is out of range 1-31",
        ),
        ("0 0 * 13 *", 7, Some("month"), "13 is out of range 1-12"),
        ("*/0 * * * *", 3, Some("minute"), "step must be at least 1"),
        ("0 5-2 * * *", 3, Some("hour"), "runs backwards"),
        ("0 1,,2 * * *", 5, Some("hour"), "empty list element"),
        ("* * *", 1, None, "found 3"),
        ("1 2 3 4 5 6 7", 1, None, "found 7"),
        ("", 1, None, "empty expression"),
        ("  @reboot", 3, None, "unknown macro @reboot"),
        (
            "0 0 L * *",
            5,
            Some("day-of-month"),
            "\"L\" is not a number",
        ),
        ("0 0 30 2 *", 1, None, "never fires"),
    ];
    for (expression, column, field, reason) in cases {
        let err = Schedule::parse(expression, Tz::UTC).unwrap_err();
        assert_eq!(err.column, *column, "{expression}: {err}");
        assert_eq!(err.field, *field, "{expression}: {err}");
        assert!(err.reason.contains(reason), "{expression}: {err}");
        assert!(
            err.to_string().contains(&format!("column {column}")),
            "{err}"
        );
    }
}

#[test]
fn at_start_says_whether_a_missed_run_is_run_or_skipped() {
    use chrono::TimeZone;
    use schedules::{AtStart, CatchUp, Schedule};
    let daily = Schedule::parse("0 3 * * *", chrono_tz::UTC).unwrap();
    let at = |d: u32, h: u32| chrono::Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap();
    assert_eq!(
        daily.at_start(None, at(2, 4), CatchUp::RunOnce),
        AtStart::FirstStart
    );
    assert_eq!(
        daily.at_start(Some(at(2, 3)), at(2, 4), CatchUp::RunOnce),
        AtStart::UpToDate
    );
    assert_eq!(
        daily.at_start(Some(at(1, 3)), at(2, 4), CatchUp::RunOnce),
        AtStart::RunMissed(at(2, 3))
    );
    assert_eq!(
        daily.at_start(Some(at(1, 3)), at(2, 4), CatchUp::Skip),
        AtStart::SkipMissed(at(2, 3))
    );
}
