//! Tasks: the TaskSpec v1 request contract, the policy gate and the task lifecycle.

pub mod cwom_adapter;
pub mod lifecycle;
pub mod policy;
pub mod run;
pub mod spec;

#[cfg(test)]
mod run_tests;
#[cfg(test)]
mod tests;

pub use cwom_adapter::{task_to_cwom, CwomIds, TaskCwom};
pub use lifecycle::{EnqueueTask, TaskStatus};
pub use policy::{evaluate, normalise_repo, parse_prefixes, PolicyConfig, PolicyError};
pub use spec::{parse_task_spec, Constraints, Operation, RequestedBy, Target, TaskSpec};
