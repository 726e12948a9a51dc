//! statecast-telemetry
