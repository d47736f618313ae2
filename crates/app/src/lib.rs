//! JCT use cases: load, decide, append; the API and worker call these
