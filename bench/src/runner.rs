//! Running a workload through each approach: a warm-up that doubles as the ready check,
//! then the jobs one at a time, with N closed-loop users, or as an open loop of seeded
//! Poisson arrivals whose latency counts from each scheduled send time.

use crate::approach::Approach;
use crate::client::tls::Trust;
use crate::client::{ApproachClient, Targets};
use crate::record::{Failure, RequestRecord};
use crate::workload::Job;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// In this order, one after the other.
    pub approaches: Vec<Approach>,
    /// One kept-alive connection (or session) per user; else one per request.
    pub reuse: bool,
    pub jobs: Vec<Job>,
    /// Closed-loop users (each with its own connection); 1 = one request at a time.
    pub concurrency: usize,
    /// Closed loop: users start evenly over this long rather than all at once (a
    /// thousand handshakes in the same millisecond measure the burst, not the steady state).
    pub ramp: Duration,
    /// Open loop: mean arrivals per second (Poisson); `concurrency` is then ignored.
    pub rate: Option<f64>,
    /// Seeds the open loop's arrival times.
    pub seed: u64,
    /// Bound on one request.
    pub timeout: Duration,
    /// One uncounted request per approach first (and the ready check).
    pub warmup: bool,
    pub targets: Targets,
    pub trust: Trust,
    /// Show a progress bar.
    pub progress: bool,
}

impl RunConfig {
    /// One request at a time through every approach, fresh connections, one warm-up per
    /// approach, the default prompts once each: name what differs with struct update syntax.
    pub fn new(targets: Targets, trust: Trust) -> Self {
        Self {
            approaches: Approach::ALL.to_vec(),
            reuse: false,
            jobs: crate::workload::jobs(&crate::workload::default_prompts(), None, 1)
                .unwrap_or_default(),
            concurrency: 1,
            ramp: Duration::ZERO,
            rate: None,
            seed: 1,
            timeout: Duration::from_secs(60),
            warmup: true,
            targets,
            trust,
            progress: false,
        }
    }
}

/// What one approach's run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApproachRun {
    pub approach: Approach,
    /// Connections (or sessions) the measured requests opened.
    pub connections: u64,
    /// Set when the warm-up failed and the approach was skipped.
    pub unreachable: Option<String>,
    pub records: Vec<RequestRecord>,
    /// Wall clock (Unix ns) when the measured requests began (after the warm-up) and
    /// when the last one ended: the window in which the probe's records are this run's.
    pub measured_from_unix_ns: u64,
    pub measured_to_unix_ns: u64,
}

/// Now, in nanoseconds since the Unix epoch (what the probe's records use).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub async fn run(cfg: &RunConfig) -> Vec<ApproachRun> {
    let mut runs = Vec::new();
    for &approach in &cfg.approaches {
        runs.push(run_approach(cfg, approach).await);
    }
    runs
}

fn bar(cfg: &RunConfig, approach: Approach) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(cfg.jobs.len() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>4} [{bar:30}] {pos}/{len} prompts  {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(approach.as_str());
    pb
}

async fn run_approach(cfg: &RunConfig, approach: Approach) -> ApproachRun {
    let new_client = || ApproachClient::new(approach, &cfg.targets, &cfg.trust);
    let mut first = match new_client() {
        Ok(c) => c,
        Err(e) => return skipped(cfg, approach, e.to_string()),
    };
    if cfg.warmup {
        let prompt = cfg.jobs.first().map_or("warm-up", |j| j.prompt.as_str());
        let rec = first.stream(prompt, 0, cfg.reuse, cfg.timeout).await;
        if let Some(e) = rec.error {
            first.shutdown().await;
            return skipped(cfg, approach, format!("warm-up request failed: {e}"));
        }
    }
    let warm_connections = first.connections();
    let pb = bar(cfg, approach);
    let measured_from_unix_ns = unix_ns();
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<RequestRecord>();
    let pool = Arc::new(Mutex::new(vec![first]));
    let runner = async {
        match cfg.rate {
            None => closed_loop(cfg, approach, pool.clone(), started, tx).await,
            Some(rate) => open_loop(cfg, approach, rate, pool.clone(), started, tx).await,
        }
    };
    let collect = async {
        let mut records = Vec::new();
        let mut tokens = 0u64;
        while let Some(r) = rx.recv().await {
            tokens += r.tokens();
            pb.inc(1);
            pb.set_message(format!(
                "{:.0} tokens/s",
                tokens as f64 / started.elapsed().as_secs_f64().max(1e-3)
            ));
            records.push(r);
        }
        records
    };
    let ((), mut records) = tokio::join!(runner, collect);
    let measured_to_unix_ns = unix_ns();
    pb.finish_and_clear();
    records.sort_by_key(|r| (r.round, r.prompt_index));
    let clients: Vec<ApproachClient> = std::mem::take(&mut *lock(&pool));
    // With reuse the warm-up's connection carries the measured requests too; fresh, it
    // served the warm-up alone.
    let opened = clients.iter().map(ApproachClient::connections).sum::<u64>();
    let connections = if cfg.reuse {
        opened
    } else {
        opened - warm_connections
    };
    for c in clients {
        c.shutdown().await;
    }
    ApproachRun {
        approach,
        connections,
        unreachable: None,
        records,
        measured_from_unix_ns,
        measured_to_unix_ns,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking user task cannot leave the pool half-updated: push and pop are atomic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn skipped(cfg: &RunConfig, approach: Approach, reason: String) -> ApproachRun {
    ApproachRun::not_run(&cfg.jobs, approach, reason)
}

impl ApproachRun {
    /// An approach that could not run (its warm-up or client set-up failed): every job a
    /// `not-run` failure with the reason.
    pub fn not_run(jobs: &[Job], approach: Approach, reason: String) -> Self {
        let records = jobs
            .iter()
            .map(|j| {
                let mut r = crate::record::Recorder::new(approach, j.prompt_index, Instant::now())
                    .fail(Failure::NotRun, format!("not run: {reason}"));
                r.round = j.round;
                r
            })
            .collect();
        ApproachRun {
            approach,
            connections: 0,
            unreachable: Some(reason),
            records,
            measured_from_unix_ns: 0,
            measured_to_unix_ns: 0,
        }
    }
}

/// `concurrency` users, each with its own client, take jobs in order until none are left.
async fn closed_loop(
    cfg: &RunConfig,
    approach: Approach,
    pool: Arc<Mutex<Vec<ApproachClient>>>,
    started: Instant,
    tx: mpsc::UnboundedSender<RequestRecord>,
) {
    let queue = Arc::new(Mutex::new(
        cfg.jobs.iter().cloned().collect::<VecDeque<Job>>(),
    ));
    let mut users = tokio::task::JoinSet::new();
    let n = cfg.concurrency.max(1);
    for i in 0..n {
        // User i starts at i/n of the ramp.
        let start_at = started + cfg.ramp.mul_f64(i as f64 / n as f64);
        let client = lock(&pool).pop();
        let mut client = match client {
            Some(c) => c,
            None => match ApproachClient::new(approach, &cfg.targets, &cfg.trust) {
                Ok(c) => c,
                Err(_) => continue, // the same configuration built the first client
            },
        };
        let (queue, pool, tx) = (queue.clone(), pool.clone(), tx.clone());
        let (reuse, timeout) = (cfg.reuse, cfg.timeout);
        users.spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            loop {
                let job = lock(&queue).pop_front();
                let Some(job) = job else { break };
                let due = Instant::now();
                let mut rec = client
                    .stream_due(&job.prompt, job.prompt_index, reuse, timeout, due)
                    .await;
                rec.round = job.round;
                rec.start_offset_s = (due - started).as_secs_f64();
                let _ = tx.send(rec);
            }
            lock(&pool).push(client);
        });
    }
    drop(tx);
    while users.join_next().await.is_some() {}
}

/// Arrival times of a Poisson process at `rate` per second, seeded.
pub fn poisson_arrivals(n: usize, rate: f64, seed: u64) -> Vec<Duration> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0f64;
    (0..n)
        .map(|_| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            t += -u.ln() / rate;
            Duration::from_secs_f64(t)
        })
        .collect()
}

/// Sends each job at its scheduled time, whatever is still in flight; a request takes an
/// idle client from the pool or opens a new one.
async fn open_loop(
    cfg: &RunConfig,
    approach: Approach,
    rate: f64,
    pool: Arc<Mutex<Vec<ApproachClient>>>,
    started: Instant,
    tx: mpsc::UnboundedSender<RequestRecord>,
) {
    let arrivals = poisson_arrivals(cfg.jobs.len(), rate, cfg.seed);
    let mut inflight = tokio::task::JoinSet::new();
    for (job, at) in cfg.jobs.iter().cloned().zip(arrivals) {
        let due = started + at;
        tokio::time::sleep_until(due.into()).await;
        let (pool, tx, targets, trust) = (
            pool.clone(),
            tx.clone(),
            cfg.targets.clone(),
            cfg.trust.clone(),
        );
        let (reuse, timeout) = (cfg.reuse, cfg.timeout);
        inflight.spawn(async move {
            let client = lock(&pool).pop();
            let mut client = match client {
                Some(c) => c,
                None => match ApproachClient::new(approach, &targets, &trust) {
                    Ok(c) => c,
                    Err(e) => {
                        let mut r = crate::record::Recorder::new(approach, job.prompt_index, due)
                            .fail(e.failure(), e);
                        r.round = job.round;
                        let _ = tx.send(r);
                        return;
                    }
                },
            };
            let mut rec = client
                .stream_due(&job.prompt, job.prompt_index, reuse, timeout, due)
                .await;
            rec.round = job.round;
            rec.start_offset_s = at.as_secs_f64();
            let _ = tx.send(rec);
            lock(&pool).push(client);
        });
    }
    drop(tx);
    while inflight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_are_seeded_and_at_rate() {
        let a = poisson_arrivals(4000, 20.0, 7);
        assert_eq!(a, poisson_arrivals(4000, 20.0, 7));
        assert_ne!(a, poisson_arrivals(4000, 20.0, 8));
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        // 4000 arrivals at 20/s take ~200 s; the sd of the sum is sqrt(4000)/20 ≈ 3.2 s.
        let last = a.last().unwrap().as_secs_f64();
        assert!((190.0..210.0).contains(&last), "{last}");
    }
}
