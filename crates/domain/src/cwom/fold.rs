//! Folding a CWOM stream into its GET shape, by the generic event contract (see the module docs of
//! [`crate::cwom`]). The `cwom` projection does the same in SQL; this fold is what commands decide on (the
//! exact state a stream version stands for) and what as-of reads use.

use serde_json::{json, Value};

use crate::event::{Action, EntityKind};

use super::link_list;

/// The object after one event of its stream: `state` is the GET shape so far (`None` before `created`).
pub fn apply(state: Option<Value>, kind: EntityKind, action: Action, payload: &Value) -> Option<Value> {
    match action {
        Action::Created => match state {
            Some(existing) => Some(existing),
            None => payload.get("object").filter(|object| object.is_object()).cloned(),
        },
        Action::Updated | Action::StatusChanged => {
            let mut state = state?;
            if let (Some(document), Some(changes)) =
                (state.as_object_mut(), payload.get("changes").and_then(Value::as_object))
            {
                for (field, value) in changes {
                    document.insert(field.clone(), value.clone());
                }
            }
            Some(state)
        }
        Action::Linked => {
            let mut state = state?;
            let linked_kind = payload.get("linked_kind").and_then(Value::as_str).and_then(EntityKind::parse);
            let linked_id = payload.get("linked_id").and_then(Value::as_str);
            if let (Some(linked_kind), Some(linked_id)) = (linked_kind, linked_id) {
                if let Some(field) = link_list(kind, linked_kind) {
                    append_ref(&mut state, field, linked_kind, linked_id);
                }
            }
            Some(state)
        }
        Action::Unlinked | Action::Deleted => state,
    }
}

/// The GET shape after a whole stream, given as `(action, payload)` pairs in stream order.
pub fn fold<'a>(kind: EntityKind, events: impl IntoIterator<Item = (Action, &'a Value)>) -> Option<Value> {
    events.into_iter().fold(None, |state, (action, payload)| apply(state, kind, action, payload))
}

/// Appends `{"kind", "id"}` to the list `field` unless a ref with that kind and id is already in it.
fn append_ref(document: &mut Value, field: &str, kind: EntityKind, id: &str) {
    let Some(document) = document.as_object_mut() else {
        return;
    };
    let list = document.entry(field).or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let items = list.as_array_mut().expect("made an array above");
    let present = items.iter().any(|item| item["kind"] == kind.as_str() && item["id"] == id);
    if !present {
        items.push(json!({ "kind": kind.as_str(), "id": id }));
    }
}
