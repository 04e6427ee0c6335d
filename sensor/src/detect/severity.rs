//! The one mapping from risk to severity, for every line kind and every reader.

use serde::{Deserialize, Serialize};

/// `sensor.severity`: risk 1, 2, 3 as `Low`, `Medium`, `High`; risk 0 has none.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    /// The severity of a risk; None for 0 (not scored).
    pub fn of(risk: u8) -> Option<Self> {
        match risk {
            0 => None,
            1 => Some(Severity::Low),
            2 => Some(Severity::Medium),
            _ => Some(Severity::High),
        }
    }

    /// The lowest risk of this severity.
    pub fn risk(self) -> u8 {
        match self {
            Severity::Low => 1,
            Severity::Medium => 2,
            Severity::High => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
        }
    }

    /// Per-severity counters are indexed Low 0, Medium 1, High 2.
    pub fn index(self) -> usize {
        usize::from(self.risk() - 1)
    }

    pub const ALL: [Severity; 3] = [Severity::Low, Severity::Medium, Severity::High];
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_maps_to_severity_and_back() {
        assert_eq!(Severity::of(0), None);
        for s in Severity::ALL {
            assert_eq!(Severity::of(s.risk()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        // Risk is 0..=3; anything above still reads as the highest.
        assert_eq!(Severity::of(9), Some(Severity::High));
    }
}
