//! Tasks: the TaskSpec v1 request contract, the policy gate and the task lifecycle.
