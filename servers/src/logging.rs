//! Logging set-up shared by the binaries: `tracing` to stderr, `RUST_LOG` overriding the
//! binary's default level.

/// Installs the subscriber; `default` applies when `RUST_LOG` is unset or invalid.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

/// A warning for something that can happen thousands of times a second (sessions refused
/// or failing under load): logged at most once per `every`, each line saying how many
/// like it were held back since the last.
pub struct RateLimited {
    every: std::time::Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    held: std::sync::atomic::AtomicU64,
}

impl RateLimited {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: std::sync::Mutex::new(None),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Calls `log(held_back)` if the last line is `every` old, else counts this one.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let due = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| now.duration_since(t) >= self.every);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            log(self.held.swap(0, Ordering::Relaxed));
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimited;
    use std::time::Duration;

    #[test]
    fn a_burst_logs_once_and_counts_the_rest() {
        let w = RateLimited::new(Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..5 {
            w.warn(|held| lines.push(held));
        }
        assert_eq!(lines, vec![0]);
        let w = RateLimited::new(Duration::ZERO);
        let mut lines = Vec::new();
        for _ in 0..3 {
            w.warn(|held| lines.push(held));
        }
        assert_eq!(lines, vec![0, 0, 0]);
    }
}
