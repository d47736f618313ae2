//! Read models folded from audit_log: tasks, cwom_*, task_queue, trace folders; runner and rebuild
