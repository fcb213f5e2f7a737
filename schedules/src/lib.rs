//! Cron schedules that operators can write, for planned restarts and data refreshes.
//!
//! Accepts the 5-field crontab form (`0 2 * * *`), the 6-field form with seconds, month and
//! day names, and `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`, with crontab's day-of-week
//! numbering (0 and 7 are Sunday) and crontab's rule that a restricted day-of-month and
//! day-of-week match either. Each schedule has an IANA time zone; next fire times are correct
//! across daylight-saving changes (a job inside a skipped hour runs once when the clock jumps,
//! a job inside a repeated hour runs once). It also decides what to do about runs missed while
//! the server was down, and persists last-run marks in SQLite.
//!
//! It does not run anything: the server's scheduler component fires the timers.

mod crontab;
mod marks;
mod schedule;

pub use crontab::ScheduleError;
pub use marks::{MarkError, MarkStore};
pub use schedule::{AtStart, CatchUp, Schedule, local_zone};
