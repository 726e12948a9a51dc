//! Shared helpers for the system tests: connection settings of the local stack.
