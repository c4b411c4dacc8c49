//! Unit tests on hand-built graphs.
