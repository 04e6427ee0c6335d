//! What the view shows: a minimum severity, a process and a port.

use super::alert::Alert;
use crate::output::ecs::Severity;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MinSeverity {
    Low,
    Medium,
    High,
}

impl MinSeverity {
    fn severity(self) -> Severity {
        match self {
            MinSeverity::Low => Severity::Low,
            MinSeverity::Medium => Severity::Medium,
            MinSeverity::High => Severity::High,
        }
    }

    /// The next one round (the severity key cycles).
    pub fn next(self) -> Self {
        match self {
            MinSeverity::Low => MinSeverity::Medium,
            MinSeverity::Medium => MinSeverity::High,
            MinSeverity::High => MinSeverity::Low,
        }
    }
}

/// What the view filters on.
#[derive(Debug, Clone)]
pub struct Filter {
    pub severity: MinSeverity,
    pub process: Option<String>,
    /// The flow's port ([`super::alert::Flow::port`]).
    pub port: Option<u16>,
}

impl Filter {
    pub fn shows(&self, a: &Alert) -> bool {
        a.severity() >= Some(self.severity.severity())
            && self
                .process
                .as_deref()
                .is_none_or(|p| a.executable.contains(p))
            && self.port.is_none_or(|p| a.flow.port() == Some(p))
    }
}
