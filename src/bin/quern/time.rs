//! Times as people read them: UTC dates and short durations.

use std::time::Duration;

use quern::Timestamp;

/// `2024-01-01T00:00:00.000Z`.
pub fn utc(t: Timestamp) -> String {
    let ms = t.0 % 1_000;
    let secs = t.0 / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `3d4h`, `12m5s`, `850ms`: as the control channel words it too.
pub fn duration(d: Duration) -> String {
    quern::control::age(d)
}

/// How long from `earlier` to `now`, or "in ..." when `earlier` is in the future.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    if t <= now {
        format!("{} ago", duration(now.since(t)))
    } else {
        format!("in {}", duration(t.since(now)))
    }
}
