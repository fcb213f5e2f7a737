//! A schedule in a time zone: next fire times across daylight-saving changes, and catch-up.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crontab::{self, ScheduleError};

/// What to do about runs missed while the server was down: `skip` ignores them and waits for
/// the next scheduled time; `run_once` runs once at start-up if one or more runs were missed.
#[expect(
    missing_docs,
    reason = "variants are described on the enum, so the JSON Schema lists them as a plain enum"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    #[default]
    Skip,
    RunOnce,
}

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    every_hour: bool,
    /// Crontab's day rule may need two `cron` schedules whose union is this one.
    cron: Vec<cron::Schedule>,
}

/// How far past the start of the search wall-clock candidates are considered, to cover a
/// repeated hour (whose second pass has earlier wall-clock times than its first).
const LOOK_BACK: Duration = Duration::hours(3);

/// The machine's own IANA time zone, or UTC when it cannot be determined.
#[must_use]
pub fn local_zone() -> Tz {
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|name| Tz::from_str(&name).ok())
        .unwrap_or(Tz::UTC)
}

impl Schedule {
    /// Parses a crontab expression to fire in `zone`.
    ///
    /// # Errors
    /// When the expression is malformed, or names dates that never occur (`0 0 30 2 *`).
    pub fn parse(expression: &str, zone: Tz) -> Result<Self, ScheduleError> {
        let parsed = crontab::parse(expression)?;
        let cron = parsed
            .cron_expressions
            .iter()
            .map(|e| cron::Schedule::from_str(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ScheduleError {
                expression: expression.to_owned(),
                column: 1,
                field: None,
                reason: e.to_string(),
            })?;
        let schedule = Self {
            expression: expression.to_owned(),
            zone,
            every_hour: parsed.every_hour,
            cron,
        };
        let now = Utc::now();
        if schedule.next_after(now).is_none() {
            return Err(ScheduleError {
                expression: expression.to_owned(),
                column: 1,
                field: None,
                reason: "never fires: no such date".to_owned(),
            });
        }
        Ok(schedule)
    }

    /// The expression as written.
    #[must_use]
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone it fires in.
    #[must_use]
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first fire time strictly after `after`, or `None` if it never fires again.
    ///
    /// Wall-clock times in a skipped hour fire once, at the moment the clock jumps; times in a
    /// repeated hour fire once, at their first occurrence, unless the hour field is `*` (then
    /// they fire in both passes, as the job runs every hour anyway).
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone).naive_local();
        let from = Utc.from_utc_datetime(&(local - LOOK_BACK));
        let horizon = local + LOOK_BACK;
        self.cron
            .iter()
            .filter_map(|cron| {
                let mut best: Option<DateTime<Utc>> = None;
                // Wall-clock candidates, computed as if UTC were the local zone.
                for candidate in cron.after(&from).take(100_000) {
                    let wall = candidate.naive_utc();
                    for instant in self.instants(wall) {
                        if instant > after && best.is_none_or(|b| instant < b) {
                            best = Some(instant);
                        }
                    }
                    if wall > horizon && best.is_some() {
                        break;
                    }
                }
                best
            })
            .min()
    }

    /// The instants a wall-clock time denotes in this zone.
    fn instants(&self, wall: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) if self.every_hour => {
                vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(first, _) => vec![first.with_timezone(&Utc)],
            // In a gap: the first wall-clock minute that exists, i.e. when the clock jumps.
            LocalResult::None => {
                let minute = wall - Duration::seconds(i64::from(wall.second()));
                (1..=24 * 60)
                    .find_map(|m| {
                        self.zone
                            .from_local_datetime(&(minute + Duration::minutes(m)))
                            .earliest()
                    })
                    .map(|t| vec![t.with_timezone(&Utc)])
                    .unwrap_or_default()
            }
        }
    }

    /// The first scheduled time missed between the last mark and `now`, if any.
    #[must_use]
    pub fn missed_since(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(last).filter(|t| *t <= now)
    }

    /// What a job on this schedule does when its component starts at `now`, given its last
    /// mark and its catch-up policy.
    #[must_use]
    pub fn at_start(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        catch_up: CatchUp,
    ) -> AtStart {
        let Some(last) = last else {
            return AtStart::FirstStart;
        };
        match (self.missed_since(last, now), catch_up) {
            (None, _) => AtStart::UpToDate,
            (Some(missed), CatchUp::RunOnce) => AtStart::RunMissed(missed),
            (Some(missed), CatchUp::Skip) => AtStart::SkipMissed(missed),
        }
    }
}

/// What a scheduled job does at start ([`Schedule::at_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// Never marked: mark now, so that the next start knows where it stands.
    FirstStart,
    /// Nothing was missed.
    UpToDate,
    /// A run was missed (the first at this time) and the policy runs it once now.
    RunMissed(DateTime<Utc>),
    /// A run was missed and the policy skips it: mark now.
    SkipMissed(DateTime<Utc>),
}
