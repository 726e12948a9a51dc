//! statecast-events
