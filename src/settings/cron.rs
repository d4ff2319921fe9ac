//! Cron schedules, time zones and maintenance windows: the parsing the config loader does, and
//! the evaluation the scheduler and the upgrade gate run over the parsed values.
//!
//! Admins write standard 5-field crontab lines (or `@daily`-style names); the `cron` crate wants
//! a seconds field, so [`Cron::parse`] translates before parsing.

use std::fmt;
use std::str::FromStr;

use super::Window;

/// Why a crontab line or a time zone name was refused.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    #[error("invalid cron expression {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week), found {found}")]
    FieldCount { expr: String, found: usize },
    #[error("invalid cron expression {expr:?}: day of week {day} is out of range 0-7")]
    DayOfWeek { expr: String, day: u8 },
    #[error("invalid cron expression {expr:?}: {source}")]
    Syntax {
        expr: String,
        source: cron::error::Error,
    },
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin, UTC, or `local`)")]
    Zone(String),
}

/// A parsed crontab line; keeps the text the admin wrote, for display.
#[derive(Debug, Clone)]
pub struct Cron {
    expr: String,
    schedule: cron::Schedule,
}

impl Cron {
    /// Parses a standard crontab expression (5 fields, or `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`).
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let e = expr.trim();
        let six = match e {
            "@hourly" => "0 0 * * * *".to_string(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
            "@weekly" => "0 0 0 * * Sun".to_string(),
            "@monthly" => "0 0 0 1 * *".to_string(),
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
            _ => {
                let fields: Vec<&str> = e.split_whitespace().collect();
                if fields.len() != 5 {
                    return Err(CronError::FieldCount {
                        expr: expr.to_string(),
                        found: fields.len(),
                    });
                }
                // crontab counts Sunday as 0 (and 7); the cron crate counts 1-7 from Sunday.
                let dow = fields[4]
                    .split(',')
                    .map(shift_dow)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|day| CronError::DayOfWeek {
                        expr: expr.to_string(),
                        day,
                    })?
                    .join(",");
                format!(
                    "0 {} {} {} {} {}",
                    fields[0], fields[1], fields[2], fields[3], dow
                )
            }
        };
        let schedule = cron::Schedule::from_str(&six).map_err(|source| CronError::Syntax {
            expr: expr.to_string(),
            source,
        })?;
        Ok(Cron {
            expr: expr.to_string(),
            schedule,
        })
    }

    /// The expression as the admin wrote it.
    pub fn as_str(&self) -> &str {
        &self.expr
    }
}

/// When a job with schedule `schedule` that last started at `last` is next due: `None` when it
/// is due now (never ran, no schedule, or its next time has passed), else that time.
pub fn next_due(schedule: Option<&Cron>, zone: Zone, last: Option<i64>, now: i64) -> Option<i64> {
    let (Some(cron), Some(last)) = (schedule, last) else {
        return None;
    };
    // A last start outside chrono's range is corrupt state: treat the job as due.
    let after = chrono::DateTime::from_timestamp(last, 0)?;
    let next = match zone {
        Zone::Local => cron
            .schedule
            .after(&after.with_timezone(&chrono::Local))
            .next()
            .map(|t| t.timestamp()),
        Zone::Named(tz) => cron
            .schedule
            .after(&after.with_timezone(&tz))
            .next()
            .map(|t| t.timestamp()),
    };
    next.filter(|n| *n > now)
}

/// A schedule's time zone: the host's (as crontab does) or an IANA zone from the tz database
/// compiled into the binary (so a container without /usr/share/zoneinfo works the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    #[default]
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    /// `None`/`local` → the host's zone; otherwise an IANA name such as `Europe/Berlin` or `UTC`.
    pub fn parse(name: Option<&str>) -> Result<Zone, CronError> {
        match name {
            None | Some("local") => Ok(Zone::Local),
            Some(n) => n
                .parse::<chrono_tz::Tz>()
                .map(Zone::Named)
                .map_err(|_| CronError::Zone(n.to_string())),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Local => f.write_str("local"),
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

/// Whether a promotion needing `needed` seconds may start at `now`: `Ok(())` inside a window with
/// enough time left (and not on a blackout date), else the next window start that qualifies
/// (searching two weeks ahead; `None` when there is none).
pub fn window_allows(
    window: &Window,
    blackout: &[chrono::NaiveDate],
    zone: Zone,
    now: i64,
    needed: i64,
) -> Result<(), Option<i64>> {
    use chrono::{Datelike, TimeZone};
    let Some(t) = chrono::DateTime::from_timestamp(now, 0) else {
        return Err(None);
    };
    let today = match zone {
        Zone::Local => t.with_timezone(&chrono::Local).date_naive(),
        Zone::Named(tz) => t.with_timezone(&tz).date_naive(),
    };
    let mut next: Option<i64> = None;
    for offset in -1..=14 {
        let date = today + chrono::Duration::days(offset);
        if !window.days.contains(&date.weekday()) || blackout.contains(&date) {
            continue;
        }
        let naive = date.and_time(window.start);
        // A start inside a DST gap does not exist that day; an ambiguous one takes the earlier.
        let start = match zone {
            Zone::Local => chrono::Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.timestamp()),
            Zone::Named(tz) => tz
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.timestamp()),
        };
        let Some(start) = start else { continue };
        let end = start + window.duration.as_secs() as i64;
        if start <= now && now + needed <= end {
            return Ok(());
        }
        if start > now && needed <= end - start {
            next = Some(next.map_or(start, |n: i64| n.min(start)));
        }
    }
    Err(next)
}

/// A stable offset in `[0, jitter)` for one job's occurrence: the same after a restart, different
/// per job, occurrence and host, so hosts with the same schedule do not all start at once.
pub fn jitter_offset(job: &str, last: Option<i64>, jitter: std::time::Duration) -> i64 {
    let span = jitter.as_secs() as i64;
    if span == 0 {
        return 0;
    }
    use sha2::Digest;
    // The machine id spreads hosts that share a config; the last start spreads occurrences.
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let h = sha2::Sha256::digest(format!("{job}:{}:{}", last.unwrap_or(0), machine.trim()));
    let n = i64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])).unsigned_abs() as i64;
    n % span
}

/// One comma-separated part of a crontab day-of-week field, renumbered for the `cron` crate; the
/// error is the out-of-range day.
fn shift_dow(part: &str) -> Result<String, u8> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (part, None),
    };
    let map = |s: &str| -> Result<String, u8> {
        match s.parse::<u8>() {
            Ok(n @ 0..=7) => Ok(((n % 7) + 1).to_string()),
            Ok(n) => Err(n),
            Err(_) => Ok(s.to_string()),
        }
    };
    let range = match range.split_once('-') {
        Some((a, b)) => {
            // `1-7` in crontab ends on Sunday; keep ranges monotonic by mapping 7 to 7 (Saturday+1).
            let end = if b == "7" { "7".to_string() } else { map(b)? };
            format!("{}-{}", map(a)?, end)
        }
        None => map(range)?,
    };
    Ok(match step {
        Some(s) => format!("{range}/{s}"),
        None => range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_is_stable() {
        let j = std::time::Duration::from_secs(600);
        for last in 0..200 {
            let o = jitter_offset("upgrade", Some(last), j);
            assert!((0..600).contains(&o));
            assert_eq!(o, jitter_offset("upgrade", Some(last), j));
        }
        assert_eq!(jitter_offset("keys", Some(5), std::time::Duration::ZERO), 0);
    }

    #[test]
    fn windows() {
        use chrono::Weekday::*;
        // 2026-11-23 (a Monday) 10:00 UTC
        let t = 1_795_428_000;
        let w = |days: Vec<chrono::Weekday>, start: &str, hours: u64| Window {
            days,
            start: chrono::NaiveTime::parse_from_str(start, "%H:%M").expect("time"),
            duration: std::time::Duration::from_secs(hours * 3600),
            timezone: None,
        };
        let utc = Zone::parse(Some("UTC")).expect("zone");
        assert_eq!(
            window_allows(&w(vec![Mon], "09:00", 2), &[], utc, t, 600),
            Ok(())
        );
        // Not enough time left: wait for next Monday's window.
        assert_eq!(
            window_allows(&w(vec![Mon], "09:00", 2), &[], utc, t, 3 * 3600),
            Err(None),
            "the window is shorter than the promotion"
        );
        assert_eq!(
            window_allows(&w(vec![Mon], "09:00", 2), &[], utc, t, 3000),
            Ok(())
        );
        assert_eq!(
            window_allows(&w(vec![Mon], "09:00", 1), &[], utc, t, 600),
            Err(Some(t - 3600 + 7 * 86400))
        );
        // A window that started yesterday evening and spans midnight.
        assert_eq!(
            window_allows(&w(vec![Sun], "22:00", 14), &[], utc, t, 600),
            Ok(())
        );
        // Blackout today: the next Monday.
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
        assert_eq!(
            window_allows(&w(vec![Mon], "09:00", 2), &[today], utc, t, 600),
            Err(Some(t - 3600 + 7 * 86400))
        );
    }

    #[test]
    fn due_times() {
        // 2026-11-23T10:00:00Z
        let t = 1_795_428_000;
        let cron = |e: &str| Cron::parse(e).expect("valid");
        let zone = |z: &str| Zone::parse(Some(z)).expect("zone");
        assert_eq!(
            next_due(None, Zone::Local, Some(t), t),
            None,
            "no schedule: always due"
        );
        assert_eq!(
            next_due(Some(&cron("@daily")), zone("UTC"), None, t),
            None,
            "never ran"
        );
        // Ran at 10:00 with a 04:00 schedule: next due tomorrow 04:00.
        let four = cron("0 4 * * *");
        assert_eq!(
            next_due(Some(&four), zone("UTC"), Some(t), t + 60),
            Some(t + 18 * 3600)
        );
        assert_eq!(
            next_due(Some(&four), zone("UTC"), Some(t), t + 18 * 3600),
            None
        );
        assert!(Zone::parse(Some("Mars/Olympus")).is_err());
        // Berlin is UTC+1 in November: 04:00 there is 03:00 UTC.
        assert_eq!(
            next_due(Some(&four), zone("Europe/Berlin"), Some(t), t + 60),
            Some(t + 17 * 3600)
        );
        // New York is UTC-5: 04:00 there is 09:00 UTC tomorrow (10:00 UTC today has passed it).
        assert_eq!(
            next_due(Some(&four), zone("America/New_York"), Some(t), t + 60),
            Some(t + 23 * 3600)
        );
    }

    #[test]
    fn windows_in_named_zones() {
        use chrono::Weekday::*;
        let w = |days: Vec<chrono::Weekday>, start: &str, hours: u64| Window {
            days,
            start: chrono::NaiveTime::parse_from_str(start, "%H:%M").expect("time"),
            duration: std::time::Duration::from_secs(hours * 3600),
            timezone: None,
        };
        // 2026-11-23 10:00 UTC is 11:00 in Berlin: inside a 10:00-12:00 Berlin window …
        let t = 1_795_428_000;
        let berlin = Zone::parse(Some("Europe/Berlin")).expect("zone");
        assert_eq!(
            window_allows(&w(vec![Mon], "10:00", 2), &[], berlin, t, 600),
            Ok(())
        );
        // … and 05:00 in New York: before a 09:00 window, which opens at 14:00 UTC.
        assert_eq!(
            window_allows(
                &w(vec![Mon], "09:00", 2),
                &[],
                Zone::parse(Some("America/New_York")).expect("zone"),
                t,
                600
            ),
            Err(Some(t + 4 * 3600))
        );
        // 2027-03-28 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): that Sunday's
        // window is skipped, the next Sunday's is offered.
        let sat = 1_806_141_600; // 2027-03-27T10:00:00Z
        let next = window_allows(&w(vec![Sun], "02:30", 1), &[], berlin, sat, 600);
        assert_eq!(next, Err(Some(1_806_798_600)), "2027-04-04T00:30:00Z");
        assert!(Zone::parse(Some("Europe/Atlantis")).is_err());
    }

    #[test]
    fn crontab_expressions() {
        for ok in [
            "0 4 * * *",
            "30 9 * * 1",
            "*/15 * * * *",
            "@daily",
            "0 0 * * 0",
            "0 3 * * 1-5",
        ] {
            assert!(Cron::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["0 4 * *", "61 * * * *", "0 4 * * 9", "banana", ""] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn monday_means_monday() {
        let s = Cron::parse("30 9 * * 1").expect("valid");
        let next = s
            .schedule
            .upcoming(chrono::Utc)
            .next()
            .expect("a next time");
        assert_eq!(next.format("%a").to_string(), "Mon");
    }
}
