//! The pure JCT domain: task specs, the policy gate, CWOM types, commands and events.
//!
//! Architecture invariant: this crate does no IO and has no async. Anything a decision needs from storage is
//! loaded by the caller (`app`) and passed in. Only events (the stored contract) derive `Serialize`.

pub mod cwom;
pub mod event;
pub mod task;
pub mod validation;
