//! Batches: the records of one poll of a partition are applied together, so the PostgreSQL
//! handlers pay one transaction (and a handful of statements) for many records instead of one
//! per record. This module decides what a batch is; `partition` applies it.
//!
//! A batch is what is *already* queued for the partition when its worker is ready for more:
//! the worker never waits for a batch to fill, so a lone record is handled as soon as it
//! arrives (latency at low load is unchanged) and batches grow only when records queue up
//! behind a busy worker. `CONSUMER_BATCH_MAX` caps the size; `1` handles records one at a time.

use tokio::sync::mpsc::UnboundedReceiver;

/// `first` and whatever `inbox` holds already, in order, up to `max` records in all (at least
/// `first`). Never waits.
pub(crate) fn drain_ready<T>(first: T, inbox: &mut UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut batch = Vec::with_capacity(max.clamp(1, 64));
    batch.push(first);
    while batch.len() < max {
        match inbox.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break, // empty, or the sender is gone: the batch is what arrived
        }
    }
    batch
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn a_batch_is_what_is_queued_up_to_the_maximum_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in 1..=5 {
            tx.send(n).unwrap();
        }
        assert_eq!(drain_ready(0, &mut rx, 3), vec![0, 1, 2]);
        assert_eq!(drain_ready(10, &mut rx, 10), vec![10, 3, 4, 5]);
        // Nothing queued: the batch is the record in hand, without waiting.
        assert_eq!(drain_ready(6, &mut rx, 10), vec![6]);
    }

    #[test]
    fn a_maximum_of_one_or_zero_is_one_record_at_a_time() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(2).unwrap();
        assert_eq!(drain_ready(1, &mut rx, 1), vec![1]);
        assert_eq!(drain_ready(2, &mut rx, 0), vec![2]);
    }

    #[test]
    fn a_closed_inbox_still_yields_what_it_held() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(2).unwrap();
        drop(tx);
        assert_eq!(drain_ready(1, &mut rx, 10), vec![1, 2]);
    }
}
