//! Kong's fixed windows: each period's window starts at a calendar boundary in UTC (second,
//! minute, hour, day, the first of the month, the first of January), and every node computes
//! the same start, so counter keys agree between replicas and across restarts.

/// One limit period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub name: &'static str,
    /// Kong's `EXPIRATIONS`: the key's lifetime and the window length `RateLimit-Reset` is
    /// computed from (30 days for a month, 365 for a year, as Kong does).
    pub secs: u64,
    pub limit_header: &'static str,
    pub remaining_header: &'static str,
}

macro_rules! period {
    ($name:literal, $secs:expr, $cap:literal) => {
        Period {
            name: $name,
            secs: $secs,
            limit_header: concat!("X-RateLimit-Limit-", $cap),
            remaining_header: concat!("X-RateLimit-Remaining-", $cap),
        }
    };
}

/// Kong's periods, shortest first.
pub const PERIODS: [Period; 6] = [
    period!("second", 1, "Second"),
    period!("minute", 60, "Minute"),
    period!("hour", 3600, "Hour"),
    period!("day", 86_400, "Day"),
    period!("month", 2_592_000, "Month"),
    period!("year", 31_536_000, "Year"),
];

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Start of `period`'s current window, in milliseconds since the epoch (Kong's
/// `timestamp.get_timestamps`), for `now_s` in whole seconds.
pub fn window_start_ms(period: &Period, now_s: i64) -> i64 {
    let start_s = match period.name {
        "month" | "year" => {
            let (y, m, _) = civil_from_days(now_s.div_euclid(86_400));
            let m = if period.name == "year" { 1 } else { m };
            days_from_civil(y, m, 1) * 86_400
        }
        _ => {
            let len = period.secs as i64;
            now_s - now_s.rem_euclid(len)
        }
    };
    start_s * 1000
}

/// Kong's `RateLimit-Reset`: seconds left in the window, at least 1.
pub fn reset_secs(period: &Period, now_s: i64) -> i64 {
    let elapsed = (now_s * 1000 - window_start_ms(period, now_s)) / 1000;
    (period.secs as i64 - elapsed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Period {
        *PERIODS.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn windows_start_at_utc_calendar_boundaries() {
        // 2024-02-29T13:45:30Z
        let now = 1_709_214_330;
        assert_eq!(window_start_ms(&p("second"), now), now * 1000);
        assert_eq!(window_start_ms(&p("minute"), now), 1_709_214_300_000);
        assert_eq!(window_start_ms(&p("hour"), now), 1_709_211_600_000);
        assert_eq!(window_start_ms(&p("day"), now), 1_709_164_800_000);
        // 2024-02-01T00:00:00Z and 2024-01-01T00:00:00Z
        assert_eq!(window_start_ms(&p("month"), now), 1_706_745_600_000);
        assert_eq!(window_start_ms(&p("year"), now), 1_704_067_200_000);
    }

    #[test]
    fn reset_counts_down_to_one() {
        let now = 1_709_214_330; // 30 s into the minute
        assert_eq!(reset_secs(&p("second"), now), 1);
        assert_eq!(reset_secs(&p("minute"), now), 30);
        assert_eq!(reset_secs(&p("hour"), now), 3600 - 45 * 60 - 30);
        // Kong measures a month as 30 days from the first: 28 days 13:45:30 elapsed.
        let elapsed = 28 * 86_400 + 13 * 3600 + 45 * 60 + 30;
        assert_eq!(reset_secs(&p("month"), now), 2_592_000 - elapsed);
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-1, 0, 59, 60, 365, 10_956, 19_782, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
