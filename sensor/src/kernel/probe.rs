//! The connect hooks by kind: what records say produced them, and what `--probe` selects.

use sensor_common::{PROBE_FENTRY, PROBE_KPROBE, PROBE_TP_BTF, PROBE_TRACEPOINT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Fentry,
    Kprobe,
    TpBtf,
    Tracepoint,
}

/// Preference order for `--probe auto`: cheapest and most precise first; the one hook
/// that needs tracefs last.
pub const AUTO_ORDER: [Probe; 4] = [
    Probe::Fentry,
    Probe::Kprobe,
    Probe::TpBtf,
    Probe::Tracepoint,
];

impl Probe {
    /// The hook as users see it in logs and in `sensor.probe`.
    pub fn hook(self) -> &'static str {
        match self {
            Probe::Fentry => "fentry/tcp_connect",
            Probe::Kprobe => "kprobe/tcp_connect",
            Probe::TpBtf => "tp_btf/inet_sock_set_state",
            Probe::Tracepoint => "tracepoint/sock/inet_sock_set_state",
        }
    }

    /// The name `--probe` takes.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Fentry => "fentry",
            Probe::Kprobe => "kprobe",
            Probe::TpBtf => "tp_btf",
            Probe::Tracepoint => "tracepoint",
        }
    }

    pub fn from_abi(v: u8) -> Option<Self> {
        match v {
            PROBE_FENTRY => Some(Probe::Fentry),
            PROBE_KPROBE => Some(Probe::Kprobe),
            PROBE_TP_BTF => Some(Probe::TpBtf),
            PROBE_TRACEPOINT => Some(Probe::Tracepoint),
            _ => None,
        }
    }
}

/// `--probe`: `auto` (every hook in [`AUTO_ORDER`]) or one hook, named by [`Probe::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeChoice(pub Option<Probe>);

impl ProbeChoice {
    /// The hooks to try, in order.
    pub fn order(self) -> Vec<Probe> {
        self.0.map_or_else(|| AUTO_ORDER.to_vec(), |p| vec![p])
    }
}

const CHOICES: [ProbeChoice; 5] = [
    ProbeChoice(None),
    ProbeChoice(Some(AUTO_ORDER[0])),
    ProbeChoice(Some(AUTO_ORDER[1])),
    ProbeChoice(Some(AUTO_ORDER[2])),
    ProbeChoice(Some(AUTO_ORDER[3])),
];

impl clap::ValueEnum for ProbeChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &CHOICES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self.0 {
            None => PossibleValue::new("auto"),
            Some(Probe::TpBtf) => PossibleValue::new(Probe::TpBtf.name()).alias("tp-btf"),
            Some(p) => PossibleValue::new(p.name()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_values_round_trip() {
        assert_eq!(Probe::from_abi(PROBE_FENTRY), Some(Probe::Fentry));
        assert_eq!(Probe::from_abi(PROBE_KPROBE), Some(Probe::Kprobe));
        assert_eq!(Probe::from_abi(PROBE_TP_BTF), Some(Probe::TpBtf));
        assert_eq!(Probe::from_abi(PROBE_TRACEPOINT), Some(Probe::Tracepoint));
        assert_eq!(Probe::from_abi(0), None);
    }

    #[test]
    fn every_choice_is_a_distinct_name() {
        use clap::ValueEnum;
        let names: Vec<String> = CHOICES
            .iter()
            .map(|c| c.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(names, ["auto", "fentry", "kprobe", "tp_btf", "tracepoint"]);
        assert_eq!(
            ProbeChoice::from_str("tp-btf", false),
            Ok(ProbeChoice(Some(Probe::TpBtf)))
        );
    }
}
