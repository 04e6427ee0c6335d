//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time, written as RFC 3339 (jiff).

use jiff::Timestamp;

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every Linux we load on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Converts boot-based nanoseconds to Unix-epoch nanoseconds. Re-`sync` now and then so
/// wall-clock steps (NTP) are followed.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    offset_ns: i128,
}

impl BootClock {
    pub fn sync() -> Self {
        Self {
            offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn to_unix_ns(self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.offset_ns
    }

    pub fn now_unix_ns() -> i128 {
        now_ns(libc::CLOCK_REALTIME)
    }
}

/// `2026-11-22T20:31:02.123456789Z`: always nine fractional digits and `Z`, so lines
/// sort as text. Instants beyond jiff's range (years -9999..=9999) are clamped to it.
pub fn rfc3339(unix_ns: i128) -> String {
    let ts = Timestamp::from_nanosecond(unix_ns).unwrap_or(if unix_ns < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    format!("{ts:.9}")
}

/// Sysmon's `UtcTime`: `2026-11-22 20:31:02.123` (UTC, milliseconds).
pub fn sysmon_utc(unix_ns: i128) -> String {
    let ts = Timestamp::from_nanosecond(unix_ns).unwrap_or(if unix_ns < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    ts.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_795_379_462_123_456_789),
            "2026-11-22T20:31:02.123456789Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn sysmon_time() {
        assert_eq!(
            sysmon_utc(1_795_379_462_123_456_789),
            "2026-11-22 20:31:02.123"
        );
    }

    #[test]
    fn boot_clock_is_close_to_now() {
        let c = BootClock::sync();
        let boot = now_ns(libc::CLOCK_BOOTTIME) as u64;
        let diff = (c.to_unix_ns(boot) - BootClock::now_unix_ns()).abs();
        assert!(diff < 1_000_000_000, "{diff}");
    }

    /// Recorded times are read by detection's parser: it reads what this writes.
    #[test]
    fn parses_what_it_formats_and_rejects_junk() {
        use crate::detect::subject::parse_time as parse_rfc3339;
        for ns in [
            0i128,
            951_782_400_000_000_001,
            1_795_379_462_123_456_789,
            -1,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-11-22T20:31:02Z"),
            Some(1_795_379_462_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T21:31:02.5+01:00"),
            Some(1_795_379_462_500_000_000)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T20:31:02",
            "2026-13-22T20:31:02Z",
            "2026-11-22T20:31:02.Z",
            "2026-11-22T20:31:02Zjunk",
            "２０２６-11-22T20:31:02Z",
            "2026-11-22T20:31:02+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
