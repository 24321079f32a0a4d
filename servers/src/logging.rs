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
