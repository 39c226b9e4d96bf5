//! The daily summary (`notify.daily_summary: {at: "18:00"}`): once a day, at that local time
//! or at the first chance after it, every notifier gets one short message about this system's
//! last 24 hours: tasks completed and failed (the latest failures named), decisions waiting,
//! and the cost. `ccm notify daily` shows it, `--now` sends it.
//!
//! "Landed" (merged work) is left out until ccm records merges.

use ccm_schema::{Severity, Timestamp};
use serde::{Deserialize, Serialize};

use super::Message;
use crate::store::Store;

/// The longest message: readable on a phone, well under every notifier's limit.
pub const MAX_CHARS: usize = 1_000;

/// How many failures and decisions are named (the rest are counted).
const NAMED: usize = 3;

/// `notify.daily_summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailySummary {
    /// Local time of day, `HH:MM` (24 h).
    pub at: String,
}

impl DailySummary {
    /// Minutes after local midnight; the error says what is wrong with `at`.
    pub fn minute(&self) -> Result<u32, String> {
        let bad = || format!("`{}` is not a time of day as HH:MM (24 h), such as 18:00", self.at);
        let (h, m) = self.at.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 || self.at.len() != 5 {
            return Err(bad());
        }
        Ok(h * 60 + m)
    }
}

/// The local date (`YYYY-MM-DD`) and minute of the day at `now`.
pub fn local_day_and_minute(now: Timestamp) -> (String, u32) {
    let secs = now.millis().div_euclid(1000) as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `secs` and `tm` are valid for reads and writes; localtime_r is thread-safe.
    let filled = unsafe { !libc::localtime_r(&secs, tm.as_mut_ptr()).is_null() };
    if !filled {
        // No time zone could be read: UTC.
        let day = now.millis().div_euclid(86_400_000);
        let minute = u32::try_from(now.millis().rem_euclid(86_400_000) / 60_000).unwrap_or(0);
        return (format!("day {day}"), minute);
    }
    // SAFETY: localtime_r returned non-null, so it filled `tm`.
    let tm = unsafe { tm.assume_init() };
    let day = format!("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    (day, u32::try_from(tm.tm_hour * 60 + tm.tm_min).unwrap_or(0))
}

/// The local day holding `now`: its date (`YYYY-MM-DD`, as [`local_day_and_minute`] names it),
/// when it began and when it ends (local midnights; a day across a clock change is 23 or 25
/// hours). Daily cost caps count their day with it.
pub fn local_day(now: Timestamp) -> (String, Timestamp, Timestamp) {
    const DAY_MS: i64 = 86_400_000;
    let secs = now.millis().div_euclid(1000) as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `secs` and `tm` are valid for reads and writes; localtime_r is thread-safe.
    let filled = unsafe { !libc::localtime_r(&secs, tm.as_mut_ptr()).is_null() };
    let midnight = |tm: &mut libc::tm, days: i32| {
        tm.tm_mday += days;
        (tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_isdst) = (0, 0, 0, -1);
        // SAFETY: `tm` is a valid, initialized `struct tm`; mktime normalizes it in place.
        let at = unsafe { libc::mktime(tm) };
        (at != -1).then(|| Timestamp(at * 1000))
    };
    if filled {
        // SAFETY: localtime_r returned non-null, so it filled `tm`.
        let tm = unsafe { tm.assume_init() };
        let day = format!("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        if let (Some(start), Some(end)) = (midnight(&mut { tm }, 0), midnight(&mut { tm }, 1)) {
            return (day, start, end);
        }
    }
    // No time zone could be read: the UTC day, named as `local_day_and_minute` names it then.
    let start = now.millis() - now.millis().rem_euclid(DAY_MS);
    (
        format!("day {}", now.millis().div_euclid(DAY_MS)),
        Timestamp(start),
        Timestamp(start + DAY_MS),
    )
}

/// Whether the summary is due: the time of day has come and none was sent today.
pub fn due(at_minute: u32, today: &str, minute: u32, last_sent_day: Option<&str>) -> bool {
    minute >= at_minute && last_sent_day != Some(today)
}

/// The summary of this system's last 24 hours before `now`.
pub async fn message(store: &Store, system: &str, now: Timestamp) -> crate::store::Result<Message> {
    let since = Timestamp(now.millis() - 86_400_000);
    let ended = store.ended_since(since).await?;
    let completed = ended.iter().filter(|(state, _, _)| state == "complete").count();
    let failures: Vec<&(String, String, String)> =
        ended.iter().filter(|(state, _, _)| state != "complete").collect();
    let pending: Vec<ccm_schema::Decision> =
        store.decisions().await?.into_iter().filter(|d| d.answered_at.is_none()).collect();
    let cost = store.cost_since(since).await?.cost_usd;
    let mut text = format!(
        "last 24 h: {completed} completed, {} failed, {} waiting for a decision; cost ${cost:.2}",
        failures.len(),
        pending.len()
    );
    for (state, title, reason) in failures.iter().take(NAMED) {
        let why = if state == "blocked" { "blocked" } else { "failed" };
        text.push_str(&format!("\n{why}: {} ({})", cut(title, 60), cut(first_line(reason), 80)));
    }
    more(&mut text, failures.len());
    for decision in pending.iter().take(NAMED) {
        text.push_str(&format!(
            "\ndecide: {} (ccm decide {})",
            cut(first_line(&decision.question), 90),
            ccm_schema::types::short_id(&decision.id)
        ));
    }
    more(&mut text, pending.len());
    Ok(Message {
        title: format!("{system}: daily summary"),
        text: crate::text::head(&text, MAX_CHARS - system.len() - 40),
        severity: Severity::Info,
        system: system.to_string(),
        decision: None,
        event: "daily_summary",
        subject: serde_json::Value::Null,
    })
}

fn more(text: &mut String, total: usize) {
    if total > NAMED {
        text.push_str(&format!("\n… and {} more", total - NAMED));
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// `text` cut to `chars` characters.
fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    text.chars().take(chars - 1).chain(['…']).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_due_once_a_day_from_its_time_on() {
        assert!(!due(18 * 60, "2026-12-07", 17 * 60 + 59, None), "not before its time");
        assert!(due(18 * 60, "2026-12-07", 18 * 60, None));
        assert!(due(18 * 60, "2026-12-07", 23 * 60, Some("2026-12-06")), "late is still today's");
        assert!(!due(18 * 60, "2026-12-07", 18 * 60 + 1, Some("2026-12-07")), "once a day");
        assert!(!due(18 * 60, "2026-12-08", 9 * 60, Some("2026-12-07")), "tomorrow at 18:00");
    }

    #[test]
    fn the_local_day_holds_now_and_ends_at_the_next_midnight() {
        let now = Timestamp::now();
        let (day, start, end) = local_day(now);
        assert!(start <= now && now < end, "{start} <= {now} < {end}");
        let hours = (end.millis() - start.millis()) / 3_600_000;
        assert!((23..=25).contains(&hours), "{hours} h");
        assert_eq!(day, local_day_and_minute(now).0);
        assert_eq!(local_day(end).1, end, "the next day begins where this one ends");
    }

    #[test]
    fn a_time_of_day_is_hh_mm() {
        let at = |s: &str| DailySummary { at: s.into() }.minute();
        assert_eq!(at("18:00"), Ok(1080));
        assert_eq!(at("00:05"), Ok(5));
        for bad in ["24:00", "18:60", "6pm", "18", "8:00", "18:00:00"] {
            assert!(at(bad).unwrap_err().contains("HH:MM"), "{bad}");
        }
    }
}
