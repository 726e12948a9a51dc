//! `docs/capacity.md`: how many API replicas, consumer replicas, partitions, and how much Redis
//! and PostgreSQL a read and write rate needs, and which part saturates first, derived from the
//! figures of `docs/benchmarks.md` and from nothing else.
//!
//! It is a generated artifact: `make bench` writes it right after `docs/benchmarks.md`,
//! `statecast-bench --capacity-only` writes it again from the `docs/benchmarks.md` on disk, and
//! a test fails when the checked-in file is not what the checked-in benchmarks give, so the two
//! cannot drift.

use std::fmt::Write as _;

/// Where every input comes from: the row of `docs/benchmarks.md` (its "ours" or "baseline"
/// column) and what it stands for.
const INPUTS: [(&str, Column, &str); 13] = [
    (
        "1 cache-hit GET: requests/s",
        Column::Ours,
        "cache-hit GETs one API replica served",
    ),
    (
        "2 cache-miss GET: requests/s",
        Column::Ours,
        "cache-miss GETs one API replica served",
    ),
    (
        "3 PUT: requests/s",
        Column::Ours,
        "PUTs one API replica committed",
    ),
    (
        "1 cache-hit GET: requests/s",
        Column::Baseline,
        "GETs one Redis served (redis-benchmark)",
    ),
    (
        "2 cache-miss GET: requests/s",
        Column::Baseline,
        "primary-key SELECTs PostgreSQL served (pgbench)",
    ),
    (
        "3 PUT: requests/s",
        Column::Baseline,
        "write transactions PostgreSQL committed (pgbench, the API's transaction)",
    ),
    (
        "8 relay drain: events/s",
        Column::Ours,
        "events the relay (one leader) published",
    ),
    (
        "4 consumer audit: records/s per replica",
        Column::Ours,
        "records one audit replica handled",
    ),
    (
        "4 consumer analytics: records/s per replica",
        Column::Ours,
        "records one analytics replica handled",
    ),
    (
        "4 consumer email: records/s per replica",
        Column::Ours,
        "records one email replica handled",
    ),
    (
        "4 consumer cache-refresh: records/s per replica",
        Column::Ours,
        "records one cache-refresh replica handled",
    ),
    (
        "6 RSS API: idle",
        Column::Ours,
        "API replica memory, idle (MiB)",
    ),
    (
        "6 RSS API: near cache filled past its default bound (scenario 10)",
        Column::Ours,
        "API replica memory, near cache full at its default bound (MiB)",
    ),
];

/// Which figure of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Ours,
    Baseline,
}

/// The workload a deployment is sized for in the worked example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Workload {
    /// GETs per second.
    pub(crate) reads: f64,
    /// Share of GETs answered from the cache (near or Redis).
    pub(crate) hit_ratio: f64,
    /// Profile writes per second.
    pub(crate) writes: f64,
    /// Largest share of a measured per-replica rate a replica is planned to carry.
    pub(crate) utilisation: f64,
}

/// The worked example of the document.
pub(crate) const EXAMPLE: Workload = Workload {
    reads: 50_000.0,
    hit_ratio: 0.95,
    writes: 1_000.0,
    utilisation: 0.6,
};

/// Redis commands per request kind, from the read and write paths (statecast-cache): a hit is
/// one GET; a miss is the GET, the fill lock, the compare-and-set fill and the unlock; a write is
/// the API's invalidation plus the cache-refresh consumer's compare-and-set.
const REDIS_PER_HIT: f64 = 1.0;
const REDIS_PER_MISS: f64 = 4.0;
const REDIS_PER_WRITE: f64 = 2.0;
/// PostgreSQL transactions per event of the consumers that write to it (audit, analytics and
/// email's reservation): one each when batches hold one record, the worst case. Under a backlog
/// a batch holds up to `CONSUMER_BATCH_MAX` records in one transaction, and the cost per event
/// falls.
const PG_TX_PER_EVENT_CONSUMERS: f64 = 3.0;

/// The value of figure `(row, column)` in `docs/benchmarks.md`, if the row is there with a number.
fn figure(benchmarks: &str, row: &str, column: Column) -> Option<f64> {
    benchmarks.lines().find_map(|line| {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 3 || cells[0] != row {
            return None;
        }
        let cell = match column {
            Column::Ours => cells[1],
            Column::Baseline => cells[2],
        };
        cell.split_whitespace().next()?.parse::<f64>().ok()
    })
}

fn ceil(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.ceil() as u64
    } else {
        0
    }
}

fn fmt(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        _ => "n/a".to_owned(),
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0} %", 100.0 * x)
    } else {
        "n/a".to_owned()
    }
}

/// `docs/capacity.md` from the text of `docs/benchmarks.md`.
pub(crate) fn render(benchmarks: &str, w: Workload) -> String {
    let get = |i: usize| figure(benchmarks, INPUTS[i].0, INPUTS[i].1);
    let (hit, miss, put) = (get(0), get(1), get(2));
    let (redis, pg_read, pg_write) = (get(3), get(4), get(5));
    let relay = get(6);
    let consumers = [
        ("audit", get(7)),
        ("analytics", get(8)),
        ("email", get(9)),
        ("cache-refresh", get(10)),
    ];
    let nan = f64::NAN;
    let (hit_v, miss_v, put_v) = (hit.unwrap_or(nan), miss.unwrap_or(nan), put.unwrap_or(nan));
    let hits = w.reads * w.hit_ratio;
    let misses = w.reads - hits;

    let mut md = String::new();
    let _ = writeln!(md, "# Capacity\n");
    let _ = writeln!(
        md,
        "Generated by `statecast-bench` from the figures of [benchmarks.md](benchmarks.md) (`make bench` writes both; \
         `statecast-bench --capacity-only` writes this file again from the benchmarks on disk, and a test fails when \
         the two disagree). Do not edit by hand: change `crates/statecast-bench/src/capacity.rs`.\n"
    );
    let _ = writeln!(
        md,
        "**Read these figures as a floor.** The benchmarks run everything on one machine (see its cores in \
         benchmarks.md): the load tools, the API, PostgreSQL, Redis and the broker share the same CPUs, so a \
         per-replica figure is what a replica did while competing with all of them. On dedicated nodes each part \
         does more; measure there before you buy hardware. Every number below is a quotient of the inputs, so a new \
         `make bench` on your own machines gives you your own table.\n"
    );
    let _ = writeln!(md, "## Inputs (from docs/benchmarks.md)\n");
    let _ = writeln!(md, "| input | row of benchmarks.md | column | figure |");
    let _ = writeln!(md, "|---|---|---|---|");
    for (i, (row, column, what)) in INPUTS.iter().enumerate() {
        let col = match column {
            Column::Ours => "ours",
            Column::Baseline => "baseline",
        };
        let _ = writeln!(md, "| {what} | `{row}` | {col} | {} |", fmt(get(i)));
    }
    let _ = writeln!(md, "\n## The model\n");
    let _ = writeln!(
        md,
        "- **API replicas.** A replica's second is shared between the kinds of request it serves, so a mix of `H` hits, \
         `M` misses and `W` writes per second takes `H / hit + M / miss + W / put` replicas at full use (the three \
         per-replica rates above), divided by the planned utilisation `u`. Add one replica so a pod can be lost or \
         rolled.\n\
         - **Redis.** One Redis (one thread) serves about the redis-benchmark rate. The API sends {REDIS_PER_HIT} \
         command per hit, {REDIS_PER_MISS} per miss (GET, fill lock, compare-and-set fill, unlock) and \
         {REDIS_PER_WRITE} per write (the API's invalidation, the cache-refresh consumer's compare-and-set). The near \
         cache answers repeated reads of a key inside a replica without Redis, so this is the worst case. Past one \
         Redis, run Redis Cluster (`REDIS_URL` naming several nodes, see contracts.md): the profile keys spread over \
         the masters by hash slot, so the load divides by the number of masters.\n\
         - **PostgreSQL.** Misses are primary-key SELECTs (compare with pgbench select-only); writes are the API's \
         transaction (compare with pgbench running it), plus {PG_TX_PER_EVENT_CONSUMERS} consumer transactions per \
         event (audit, analytics, email's reservation), each counted as one API write transaction: the worst case, \
         when every batch holds one record; under a backlog the consumers batch up to `CONSUMER_BATCH_MAX` records \
         per transaction, so their share falls. Reads and writes are added as shares of the two pgbench rates.\n\
         - **Relay.** One leader publishes every event (the others stand by), so the write rate can never pass the \
         relay drain rate, however many API replicas run.\n\
         - **Consumers and partitions.** Each group needs `W / rate` replicas at full use (divided by `u`), and a \
         partition is read by one member of a group, so the events topic needs at least as many partitions as the \
         largest group has replicas. Partitions cannot be removed later; keep spare ones.\n"
    );

    let api_load = hits / hit_v + misses / miss_v + w.writes / put_v;
    let api_replicas = ceil(api_load / w.utilisation) + 1;
    let redis_ops = hits * REDIS_PER_HIT + misses * REDIS_PER_MISS + w.writes * REDIS_PER_WRITE;
    let redis_share = redis.map_or(nan, |r| redis_ops / r);
    let pg_share = misses / pg_read.unwrap_or(nan)
        + w.writes * (1.0 + PG_TX_PER_EVENT_CONSUMERS) / pg_write.unwrap_or(nan);
    let relay_share = relay.map_or(nan, |r| w.writes / r);

    let _ = writeln!(
        md,
        "## Worked example: {:.0} reads/s ({:.0} % hits), {:.0} writes/s, replicas planned at {:.0} % of their measured rate\n",
        w.reads,
        100.0 * w.hit_ratio,
        w.writes,
        100.0 * w.utilisation
    );
    let _ = writeln!(md, "| part | arithmetic | needs |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| API replicas | ({hits:.0} / {} + {misses:.0} / {} + {:.0} / {}) / {} + 1 | {} |",
        fmt(hit),
        fmt(miss),
        w.writes,
        fmt(put),
        w.utilisation,
        if api_load.is_finite() {
            api_replicas.to_string()
        } else {
            "n/a".to_owned()
        }
    );
    let _ = writeln!(
        md,
        "| Redis | ({hits:.0} × {REDIS_PER_HIT} + {misses:.0} × {REDIS_PER_MISS} + {:.0} × {REDIS_PER_WRITE}) / {} | {} of one Redis; masters at {:.0} % each: {} |",
        w.writes,
        fmt(redis),
        pct(redis_share),
        100.0 * w.utilisation,
        ceil(redis_share / w.utilisation).max(1)
    );
    let _ = writeln!(
        md,
        "| PostgreSQL | {misses:.0} / {} + {:.0} × {} / {} | {} of this machine's PostgreSQL |",
        fmt(pg_read),
        w.writes,
        1.0 + PG_TX_PER_EVENT_CONSUMERS,
        fmt(pg_write),
        pct(pg_share)
    );
    let _ = writeln!(
        md,
        "| relay (one leader) | {:.0} / {} | {} of its rate |",
        w.writes,
        fmt(relay),
        pct(relay_share)
    );
    // `None` once any group's figure is missing: the largest group is then unknown.
    let mut partitions = Some(0);
    let mut groups: Vec<(&str, f64)> = Vec::new();
    for (name, rate) in consumers {
        let share = rate.map_or(nan, |r| w.writes / r);
        let replicas = ceil(share / w.utilisation);
        partitions = partitions
            .filter(|_| share.is_finite())
            .map(|p: u64| p.max(replicas));
        groups.push((name, share));
        let _ = writeln!(
            md,
            "| {name} consumers | {:.0} / {} / {} | {} |",
            w.writes,
            fmt(rate),
            w.utilisation,
            if share.is_finite() {
                format!("{replicas} replicas")
            } else {
                "n/a".to_owned()
            }
        );
    }
    let _ = writeln!(
        md,
        "| events topic | the largest group above, with spare | {} (the chart's default is 6) |",
        partitions.map_or_else(|| "n/a".to_owned(), |p| format!("at least {p} partitions"))
    );

    // What saturates first: the part whose share of its capacity is highest at this mix. The
    // API and consumers scale out with replicas; Redis with masters; PostgreSQL and the relay
    // do not scale out here.
    let mut fixed = vec![
        ("PostgreSQL", pg_share),
        ("the relay", relay_share),
        ("one Redis", redis_share),
    ];
    fixed.retain(|(_, s)| s.is_finite());
    fixed.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = writeln!(md, "\n## What saturates first\n");
    if let Some((first, share)) = fixed.first() {
        let headroom = 1.0 / share;
        let verdict = if headroom > 1.0 {
            format!("the whole mix can grow about {headroom:.1}× before it saturates")
        } else {
            format!(
                "it is past its capacity: on the benchmark's machine the mix must shrink to {headroom:.2}× of this, \
                 or {first} must get a bigger node"
            )
        };
        let _ = writeln!(
            md,
            "API and consumer replicas scale out, and Redis scales out by masters. What does not scale out in this \
             design is PostgreSQL (one primary takes every write and every miss) and the relay (one leader). At this \
             mix the busiest of the parts that do not scale out is **{first}**, at {}: {verdict}.",
            pct(*share)
        );
        for (name, share) in fixed.iter().skip(1) {
            let _ = writeln!(md, "Next: {name} at {}.", pct(*share));
        }
        let _ = writeln!(md);
    } else {
        let _ = writeln!(md, "n/a: benchmarks.md lacks the figures.\n");
    }
    let (idle, full) = (get(11), get(12));
    let _ = writeln!(
        md,
        "Memory: an API replica measured {} MiB idle and {} MiB with its near cache full at the default bound \
         (NEAR_CACHE_MAX_BYTES); size `api.resources` above the second, and raise it with the bound.\n",
        fmt(idle),
        fmt(full)
    );
    let per_write_pg = (1.0 + PG_TX_PER_EVENT_CONSUMERS) / pg_write.unwrap_or(nan);
    let max_writes = [1.0 / per_write_pg, relay.unwrap_or(nan)]
        .into_iter()
        .filter(|x| x.is_finite())
        .fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        md,
        "With reads served from the cache, the write rate alone is bounded by the smaller of PostgreSQL's \
         {} write transactions/s shared by {} transactions per write, and the relay's {} events/s: about {} writes/s \
         on the benchmark's machine. This bound is conservative: the consumers' batches take fewer \
         transactions per event as their backlog grows. Beyond it: give PostgreSQL a faster disk or a bigger node, and watch `outbox_pending` (relay lag) and the consumer lag \
         metric `consumer_lag` (see operations.md).",
        fmt(pg_write),
        1.0 + PG_TX_PER_EVENT_CONSUMERS,
        fmt(relay),
        fmt(max_writes.is_finite().then_some(max_writes))
    );
    md
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BENCH: &str = "\
| scenario | ours | baseline | ratio | baseline is |\n\
|---|---|---|---|---|\n\
| 1 cache-hit GET: requests/s | 20000 req/s | 100000 req/s | 0.20× | redis |\n\
| 2 cache-miss GET: requests/s | 5000 req/s | 20000 req/s | 0.25× | pgbench |\n\
| 3 PUT: requests/s | 2000 req/s | 4000 req/s | 0.50× | pgbench |\n\
| 8 relay drain: events/s | 8000 ev/s | 12000 ev/s | 0.67× | bare |\n\
| 4 consumer audit: records/s per replica | 1000 rec/s | 20000 rec/s | 0.05× | bare |\n\
| 4 consumer analytics: records/s per replica | 1000 rec/s | 20000 rec/s | 0.05× | bare |\n\
| 4 consumer email: records/s per replica | 250.0 rec/s | 20000 rec/s | 0.01× | bare |\n\
| 4 consumer cache-refresh: records/s per replica | 10000 rec/s | 20000 rec/s | 0.5× | bare |\n\
| 6 RSS API: idle | 16.00 MiB | n/a | n/a | none |\n";

    #[test]
    fn figures_are_read_from_their_row_and_column() {
        assert_eq!(
            figure(BENCH, "3 PUT: requests/s", Column::Ours),
            Some(2000.0)
        );
        assert_eq!(
            figure(BENCH, "3 PUT: requests/s", Column::Baseline),
            Some(4000.0)
        );
        assert_eq!(figure(BENCH, "6 RSS API: idle", Column::Baseline), None);
        assert_eq!(figure(BENCH, "no such row", Column::Ours), None);
    }

    #[test]
    fn the_example_is_the_arithmetic_of_the_inputs() {
        let w = Workload {
            reads: 10_000.0,
            hit_ratio: 0.9,
            writes: 500.0,
            utilisation: 0.5,
        };
        let md = render(BENCH, w);
        // API: (9000/20000 + 1000/5000 + 500/2000) / 0.5 = 1.8 → 2, +1 = 3.
        assert!(md.contains("| 3 |"), "{md}");
        // Redis: (9000 + 4000 + 1000) / 100000 = 14 %.
        assert!(md.contains("14 % of one Redis"), "{md}");
        // PostgreSQL: 1000/20000 + 500 × 4 / 4000 = 55 %; relay 500/8000 = 6 %.
        assert!(md.contains("55 % of this machine's PostgreSQL"), "{md}");
        assert!(md.contains("**PostgreSQL**, at 55 %"), "{md}");
        // Email: 500 / 250 / 0.5 = 4 replicas, the largest group: 4 partitions.
        assert!(
            md.contains("| email consumers | 500 / 250 / 0.5 | 4 replicas |"),
            "{md}"
        );
        assert!(md.contains("at least 4 partitions"), "{md}");
        // Writes alone: min(4000 / 4, 8000) = 1000.
        assert!(md.contains("about 1000 writes/s"), "{md}");
    }

    #[test]
    fn a_missing_figure_is_n_a_not_zero() {
        let md = render(
            "| 3 PUT: requests/s | 2000 req/s | n/a | n/a | x |",
            EXAMPLE,
        );
        assert!(md.contains("n/a"), "{md}");
        // No consumer figure: the partitions needed are unknown, not "at least 0".
        assert!(!md.contains("at least 0 partitions"), "{md}");
        assert!(!md.contains("inf"), "{md}");
    }

    /// The drift check: docs/capacity.md is what the checked-in docs/benchmarks.md gives.
    #[test]
    fn docs_capacity_md_is_derived_from_docs_benchmarks_md() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or(root, |dir| std::path::PathBuf::from(dir).join("../.."));
        let benchmarks = std::fs::read_to_string(root.join("docs/benchmarks.md"))
            .expect("cannot read docs/benchmarks.md");
        let capacity = std::fs::read_to_string(root.join("docs/capacity.md"))
            .expect("cannot read docs/capacity.md");
        assert!(
            render(&benchmarks, EXAMPLE) == capacity,
            "docs/capacity.md drifted from docs/benchmarks.md: run `statecast-bench --capacity-only`"
        );
    }
}
