//! What a connection means: the policy, the T1571 score, and the engine (allow rules,
//! beacons, rollups, flood control) that turns it into a typed decision.

pub mod beacon;
pub mod decision;
pub mod engine;
pub mod fold;
pub mod policy;
pub mod rollup;
pub mod scan;
pub mod score;
pub mod severity;
pub mod subject;
pub mod unmanaged;
