//! Loopback ports for servers a test starts as child processes, chosen outside the kernel's
//! ephemeral range.
//!
//! A test that learns a free port by binding port 0 and closing it, then starts a server there,
//! leaves a gap in which the port belongs to nobody. Port 0 draws from the ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default), the same range every outgoing
//! connection's local port comes from, so under a parallel suite another test's client can take
//! the port in that gap (or while a restarted server is down) and the server's `bind` fails.
//! That is how a stack test's Redis Cluster node once never listened: its bus port was in the
//! ephemeral range. Ports from here are never handed out by the kernel on its own; what is left
//! is two tests drawing the same port at random, which the bind check and the spread make rare.
//!
//! A server a test runs in its own process binds port 0 and keeps the listener: no gap, and it
//! needs none of this.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::TcpListener;
use std::ops::RangeInclusive;

/// The lowest port handed out: below it are well-known and registered services' ports that a
/// developer machine may run.
const LOWEST: u16 = 10_000;

/// Where the kernel reads `net.ipv4.ip_local_port_range`.
const RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `n` distinct loopback ports that are free now and outside the ephemeral range.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    free_port_runs(&vec![1; n])
}

/// One loopback port that is free now and outside the ephemeral range.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// For each length, the first of that many consecutive loopback ports; every port of every run
/// is free now, outside the ephemeral range, and in no other run.
pub fn free_port_runs(lengths: &[usize]) -> anyhow::Result<Vec<u16>> {
    let candidates = candidates(ephemeral_range());
    // Held until every run is found, so no two runs share a port.
    let mut held: Vec<TcpListener> = Vec::new();
    let mut starts = Vec::with_capacity(lengths.len());
    for &length in lengths {
        let run = (0..1_000)
            .find_map(|_| {
                let start = pick(&candidates, length)?;
                let listeners = (0..length)
                    .map(|i| TcpListener::bind(("127.0.0.1", start + i as u16)))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some((start, listeners))
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no {length} consecutive free loopback ports outside the ephemeral range \
                     ({candidates:?} tried 1,000 times)"
                )
            })?;
        starts.push(run.0);
        held.extend(run.1);
    }
    Ok(starts)
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> RangeInclusive<u16> {
    let read = std::fs::read_to_string(RANGE_FILE).ok().and_then(|text| {
        let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
        Some(ports.next()??..=ports.next()??)
    });
    read.unwrap_or(32_768..=60_999)
}

/// The ranges of ports outside `ephemeral` (and above [`LOWEST`]).
fn candidates(ephemeral: RangeInclusive<u16>) -> Vec<RangeInclusive<u16>> {
    let mut out = Vec::new();
    if *ephemeral.start() > LOWEST {
        out.push(LOWEST..=*ephemeral.start() - 1);
    }
    if *ephemeral.end() < u16::MAX {
        out.push((*ephemeral.end() + 1).max(LOWEST)..=u16::MAX);
    }
    out
}

/// A random start of `length` consecutive ports inside one of `ranges` (weighted by size).
fn pick(ranges: &[RangeInclusive<u16>], length: usize) -> Option<u16> {
    let length = u16::try_from(length).ok()?.max(1);
    let starts: Vec<RangeInclusive<u16>> = ranges
        .iter()
        .filter(|r| {
            r.end()
                .checked_sub(*r.start())
                .is_some_and(|span| span >= length - 1)
        })
        .map(|r| *r.start()..=*r.end() - (length - 1))
        .collect();
    let total: u64 = starts
        .iter()
        .map(|r| u64::from(*r.end() - *r.start()) + 1)
        .sum();
    if total == 0 {
        return None;
    }
    let mut at = random() % total;
    for range in starts {
        let size = u64::from(*range.end() - *range.start()) + 1;
        if at < size {
            return Some(*range.start() + at as u16);
        }
        at -= size;
    }
    None
}

/// A random number (each `RandomState` is seeded afresh).
fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_bindable() {
        let ephemeral = ephemeral_range();
        let ports = free_ports(20).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for port in &ports {
            assert!(!ephemeral.contains(port), "{port} in {ephemeral:?}");
            assert!(*port >= LOWEST);
            assert!(seen.insert(*port), "{port} twice");
            TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }

    #[test]
    fn runs_are_consecutive_and_do_not_overlap() {
        let starts = free_port_runs(&[6, 6]).unwrap();
        let (a, b) = (starts[0], starts[1]);
        assert!(a + 6 <= b || b + 6 <= a, "{a} and {b} overlap");
        let _held: Vec<TcpListener> = (0..6)
            .flat_map(|i| [a + i, b + i])
            .map(|port| TcpListener::bind(("127.0.0.1", port)).unwrap())
            .collect();
    }

    #[test]
    fn the_candidates_leave_out_the_ephemeral_range_and_low_ports() {
        assert_eq!(
            candidates(32_768..=60_999),
            vec![LOWEST..=32_767, 61_000..=u16::MAX]
        );
        assert_eq!(
            candidates(1_024..=65_535),
            Vec::<RangeInclusive<u16>>::new()
        );
        assert_eq!(candidates(5_000..=20_000), vec![20_001..=u16::MAX]);
        // A run longer than any range has no start; a run fits at a range's very end.
        assert_eq!(pick(&[10..=12], 4), None);
        assert_eq!(pick(&[10..=12], 3), Some(10));
    }
}
