//! Binding a listener named by a setting (`LISTEN_ADDR`, `METRICS_ADDR`, ...): a taken or
//! forbidden port names the address, the variable and what to do, instead of a bare
//! "Address already in use (os error 98)".

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listener could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot listen on {addr} ({variable}): {reason}; {fix}")]
pub struct ListenError {
    /// The setting that named the address.
    pub variable: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// What the operating system said.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

impl ListenError {
    /// Words `error`, met binding `addr` from `variable`.
    pub fn new(variable: &'static str, addr: SocketAddr, error: &io::Error) -> Self {
        let fix = match error.kind() {
            io::ErrorKind::AddrInUse => format!(
                "another process holds this port: stop it, or set {variable} to a free port"
            ),
            io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need privileges: set {variable} to a port of 1024 or above"
            ),
            io::ErrorKind::AddrNotAvailable => format!(
                "no interface of this host has that address: set {variable} to 0.0.0.0 (all of \
                 them) or one of its addresses"
            ),
            _ => format!("set {variable} to a host:port this process may bind"),
        };
        Self {
            variable,
            addr,
            reason: error.to_string(),
            fix,
        }
    }
}

/// Binds `addr`, the value of `variable`.
pub async fn bind(variable: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError::new(variable, addr, &e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_names_the_address_the_variable_and_what_to_do() {
        let addr: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let error = ListenError::new(
            "LISTEN_ADDR",
            addr,
            &io::Error::from(io::ErrorKind::AddrInUse),
        );
        let message = error.to_string();
        assert!(
            message.starts_with("cannot listen on 0.0.0.0:8080 (LISTEN_ADDR): "),
            "{message}"
        );
        assert!(
            message.contains("another process holds this port")
                && message.contains("set LISTEN_ADDR to a free port"),
            "{message}"
        );
        let denied = ListenError::new(
            "METRICS_ADDR",
            addr,
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(
            denied
                .to_string()
                .ends_with("set METRICS_ADDR to a port of 1024 or above"),
            "{denied}"
        );
    }

    #[tokio::test]
    async fn binding_a_taken_port_fails_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind("METRICS_ADDR", addr).await.unwrap_err();
        assert_eq!(error.addr, addr);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {addr} (METRICS_ADDR): ")),
            "{error}"
        );
    }
}
