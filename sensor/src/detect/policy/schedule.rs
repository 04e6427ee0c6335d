//! Allow-rule schedules: weekly time windows, in a fixed UTC offset or an IANA time zone
//! (so daylight saving is followed). Calendar maths is jiff's.

use std::collections::BTreeSet;

use jiff::{
    Timestamp,
    tz::{Offset, TimeZone},
};
use serde::{Deserialize, Serialize};

/// A weekly time window. `days` empty means every day; the window is `[start, end)` in
/// minutes of the local day; `start > end` crosses midnight and the part after midnight
/// belongs to the day it started on.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// 0 = Monday .. 6 = Sunday.
    pub days: BTreeSet<u8>,
    pub start_min: u16,
    pub end_min: u16,
    /// The local time: a fixed offset, or an IANA zone by name.
    pub zone: Zone,
}

/// Where a schedule's hours are read.
#[derive(Debug, Clone)]
pub enum Zone {
    /// Minutes east of UTC.
    Offset(i32),
    /// An IANA zone (`Europe/Berlin`), resolved once when the policy loads.
    Named(String, TimeZone),
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Zone::Offset(a), Zone::Offset(b)) => a == b,
            (Zone::Named(a, _), Zone::Named(b, _)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl PartialEq for Schedule {
    fn eq(&self, o: &Self) -> bool {
        (self.days == o.days)
            && (self.start_min, self.end_min) == (o.start_min, o.end_min)
            && self.zone == o.zone
    }
}

impl Eq for Schedule {}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out {
            #[serde(skip_serializing_if = "Vec::is_empty")]
            days: Vec<&'static str>,
            hours: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            utc_offset: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            time_zone: Option<String>,
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let (utc_offset, time_zone) = match &self.zone {
            Zone::Offset(off) => (
                Some(format!(
                    "{}{:02}:{:02}",
                    if *off < 0 { '-' } else { '+' },
                    off.abs() / 60,
                    off.abs() % 60
                )),
                None,
            ),
            Zone::Named(name, _) => (None, Some(name.clone())),
        };
        Out {
            days: self
                .days
                .iter()
                .filter_map(|&d| DAY_NAMES.get(usize::from(d)).copied())
                .collect(),
            hours: format!("{}-{}", hm(self.start_min), hm(self.end_min)),
            utc_offset,
            time_zone,
        }
        .serialize(s)
    }
}

impl Schedule {
    /// Whether the Unix time `unix_s` falls in the window.
    pub fn contains(&self, unix_s: i64) -> bool {
        // Outside jiff's calendar (years -9999..=9999): no time we could be in.
        let Ok(ts) = Timestamp::from_second(unix_s) else {
            return false;
        };
        let local = match &self.zone {
            Zone::Offset(min) => match Offset::from_seconds(min * 60) {
                Ok(o) => o.to_datetime(ts),
                Err(_) => return false,
            },
            Zone::Named(_, tz) => tz.to_datetime(ts),
        };
        let minute =
            u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let today = local.weekday().to_monday_zero_offset().unsigned_abs();
        let day_ok = |d: u8| self.days.is_empty() || self.days.contains(&d);
        if self.start_min < self.end_min {
            day_ok(today) && (self.start_min..self.end_min).contains(&minute)
        } else {
            (minute >= self.start_min && day_ok(today))
                || (minute < self.end_min && day_ok((today + 6) % 7))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleFile {
    days: Option<Vec<String>>,
    hours: Option<String>,
    utc_offset: Option<String>,
    time_zone: Option<String>,
}

fn parse_hhmm(s: &str) -> std::result::Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM (00:00..24:00)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub(super) fn parse_schedule(f: &ScheduleFile) -> std::result::Result<Schedule, String> {
    let mut days = BTreeSet::new();
    if let Some(list) = &f.days {
        if list.is_empty() {
            return Err("schedule.days is empty; leave it out for every day".into());
        }
        for d in list {
            let low = d.trim().to_ascii_lowercase();
            let i = DAY_NAMES
                .iter()
                .position(|n| low.starts_with(n) && low.len() >= 3)
                .ok_or_else(|| format!("{d:?} is not a day (mon..sun)"))?;
            days.insert(u8::try_from(i).unwrap_or(0));
        }
    }
    let (start_min, end_min) = match &f.hours {
        None => (0, 24 * 60),
        Some(h) => {
            let (a, b) = h
                .split_once('-')
                .ok_or_else(|| format!("hours {h:?} must be HH:MM-HH:MM"))?;
            (parse_hhmm(a)?, parse_hhmm(b)?)
        }
    };
    if start_min == end_min {
        return Err("schedule.hours starts and ends at the same minute (an empty window)".into());
    }
    if f.days.is_none() && f.hours.is_none() {
        return Err("schedule has neither days nor hours".into());
    }
    let zone = match (&f.utc_offset, &f.time_zone) {
        (Some(_), Some(_)) => {
            return Err("schedule has both utc_offset and time_zone; give one".into());
        }
        (None, Some(name)) => Zone::Named(
            name.clone(),
            TimeZone::get(name).map_err(|e| {
                format!(
                    "time_zone {name:?} is not an IANA time zone such as \"Europe/Berlin\" ({e})"
                )
            })?,
        ),
        (None, None) => Zone::Offset(0),
        (Some(o), None) => Zone::Offset({
            let t = o.trim();
            let bad = || format!("utc_offset {o:?} must be +HH:MM or -HH:MM");
            let (sign, rest) = match t.strip_prefix('-') {
                Some(r) => (-1, r),
                None => (1, t.strip_prefix('+').unwrap_or(t)),
            };
            let m = i32::from(parse_hhmm(rest).map_err(|_| bad())?);
            if m > 14 * 60 {
                return Err(bad());
            }
            sign * m
        }),
    };
    Ok(Schedule {
        days,
        start_min,
        end_min,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_crossing_midnight_belongs_to_its_start_day() {
        let w = parse_schedule(&ScheduleFile {
            days: Some(vec!["fri".into()]),
            hours: Some("22:00-06:00".into()),
            utc_offset: None,
            time_zone: None,
        })
        .unwrap();
        let fri = 1_795_392_000 - 3 * 86_400; // 2026-11-20, a Friday, 00:00Z
        assert!(w.contains(fri + 23 * 3600), "Fri 23:00");
        assert!(w.contains(fri + 86_400 + 3600), "Sat 01:00, Friday's night");
        assert!(!w.contains(fri + 3600), "Fri 01:00 is Thursday's night");
        assert!(!w.contains(fri + 12 * 3600), "Fri noon");
    }

    #[test]
    fn named_zones_follow_daylight_saving() {
        let at = |offset: Option<&str>, zone: Option<&str>| {
            parse_schedule(&ScheduleFile {
                days: None,
                hours: Some("09:00-17:30".into()),
                utc_offset: offset.map(str::to_string),
                time_zone: zone.map(str::to_string),
            })
        };
        let berlin = at(None, Some("Europe/Berlin")).unwrap();
        let fixed = at(Some("+01:00"), None).unwrap();
        // 2026-07-01 07:30Z is 09:30 in Berlin (CEST, +02:00) but 08:30 at +01:00.
        let summer = 1_782_891_000;
        assert!(berlin.contains(summer), "09:30 CEST");
        assert!(!fixed.contains(summer), "08:30 at +01:00");
        // 2026-11-23 08:30Z is 09:30 in Berlin (CET, +01:00): both agree in winter.
        let winter = 1_795_422_600;
        assert!(berlin.contains(winter) && fixed.contains(winter));
        assert!(!berlin.contains(winter - 3600), "08:30 CET");
        let err = at(None, Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("IANA"), "{err}");
        let err = at(Some("+01:00"), Some("Europe/Berlin")).unwrap_err();
        assert!(err.contains("both"), "{err}");
        // Shown as written: a zone by name, an offset as +HH:MM.
        let shown = serde_json::to_value(&berlin).unwrap();
        assert_eq!(shown["time_zone"], "Europe/Berlin");
        assert!(shown.get("utc_offset").is_none());
        assert_eq!(
            serde_json::to_value(&fixed).unwrap()["utc_offset"],
            "+01:00"
        );
    }
}
