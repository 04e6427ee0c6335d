//! The JA4 TLS client fingerprint (FoxIO's JA4 specification, BSD 3-Clause; JA4S, JA4H
//! and the others are under another licence and not implemented here).
