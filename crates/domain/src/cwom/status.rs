//! The CWOM work status shared by Issues and Runs (reference §4.2; spelled `canceled`, unlike tasks).

use std::fmt;

/// The status of an Issue or a Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Planned,
    Ready,
    Running,
    Blocked,
    Done,
    Failed,
    Canceled,
    UnderReview,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Planned,
        Status::Ready,
        Status::Running,
        Status::Blocked,
        Status::Done,
        Status::Failed,
        Status::Canceled,
        Status::UnderReview,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Ready => "ready",
            Status::Running => "running",
            Status::Blocked => "blocked",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
            Status::UnderReview => "under_review",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
