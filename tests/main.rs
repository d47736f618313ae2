//! System tests of JCT.
