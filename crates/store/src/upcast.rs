//! Upcasters: stored events never change; readers lift old payload versions to the current one.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::record::RecordedEvent;

type UpcastFn = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// A registry of `(event type, from version) → payload of version + 1` functions.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, i32), UpcastFn>,
}

impl Upcasters {
    pub fn new() -> Upcasters {
        Upcasters::default()
    }

    /// Registers the step that turns version `from_version` of `event_type` into version `from_version + 1`.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: i32,
        step: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Upcasters {
        self.steps.insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// Whether no step is registered (every event type is at its first schema version): upcasting is a no-op.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether a registered step would change `event` (its payload is at an older version of its type).
    pub fn lifts(&self, event: &RecordedEvent) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event.event_type.clone(), event.schema_version))
    }

    /// The event with its payload lifted through every registered step; the stored row is untouched.
    pub fn upcast(&self, mut event: RecordedEvent) -> RecordedEvent {
        if self.steps.is_empty() {
            return event;
        }
        while let Some(step) = self.steps.get(&(event.event_type.clone(), event.schema_version)) {
            event.payload = step(std::mem::take(&mut event.payload));
            event.schema_version += 1;
        }
        event
    }
}
