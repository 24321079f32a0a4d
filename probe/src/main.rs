//! tokenwire-probe: count every packet on an interface per flow and direction, classified
//! by transport and approach; charge them to requests from the servers' spans; export it
//! all on /metrics and /api/*. The command line and the event loop; the work is the
//! library's engine (`tokenwire_probe::engine`).

mod cli;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cli::{AnalyzeArgs, Cli, Command, DetachArgs, HashPasswordArgs, KernelBenchArgs, RunArgs};
use std::time::{Duration, Instant};
use tokenwire_probe::api::{self, Ask};
use tokenwire_probe::backend;
use tokenwire_probe::engine::Engine;
use tokenwire_probe::labels::Labels;
use tokenwire_probe::span_socket::{self, SpanSocket};
use tokenwire_probe::{output, shutdown, spans};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let args = match Cli::parse().command {
        Command::Run(args) => *args,
        Command::Analyze(args) => return analyze(args),
        Command::KernelBench(args) => return kernel_bench(args),
        Command::HashPassword(args) => return hash_password(args),
        Command::Detach(args) => return detach(args),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

fn hash_password(args: HashPasswordArgs) -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on standard input (one line: the password)");
    }
    let hash = bcrypt::hash(password, args.cost).context("hashing the password")?;
    println!("{hash}");
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let terminated = shutdown::terminate_signal();
    // Bind what can fail for ordinary reasons before attaching anything.
    let listener = match args.no_listen {
        true => None,
        false => Some(
            tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?,
        ),
    };
    let span_socket = match args.no_spans {
        true => None,
        false => {
            let group = args.spans_group.as_deref().map(span_socket::group_id);
            Some(SpanSocket::bind(&args.spans, group.transpose()?)?)
        }
    };
    if args.pin.is_some() && args.backend == backend::BackendKind::Pcap {
        bail!("--pin pins the eBPF backend's maps and links; drop it with --backend pcap");
    }
    let opened = backend::open(args.backend, &args.live_options(&labels))?;
    if let Some(notice) = &opened.notice {
        eprintln!("tokenwire-probe: {notice}");
    }
    let mut engine = Engine::new(opened.backend, labels, args.engine_options());
    let carry = engine.backend().carry();
    // The carried table last written, so an unchanged one is not written again.
    let mut carried = Vec::new();
    if let Some(c) = &carry {
        adopt(&mut engine, c);
    }
    let names: Vec<String> = engine.interfaces().iter().map(|(_, n)| n.clone()).collect();
    eprintln!(
        "tokenwire-probe: backend {} on {}",
        engine.backend().name(),
        names.join(", ")
    );
    let (ask_tx, mut ask_rx) = tokio::sync::mpsc::channel::<Ask>(16);
    let (_api, api_addr) = match listener {
        Some(l) => {
            let addr = l.local_addr().context("reading the listen address")?;
            engine.exclude(addr);
            eprintln!("tokenwire-probe: serving http://{addr}/metrics and /api/requests");
            let (tls, gate) = web_gate(&args)?;
            let task = AbortOnDrop(tokio::spawn(api::serve(l, ask_tx, tls, gate)));
            (Some(task), Some(addr))
        }
        None => (None, None),
    };
    if let Some(s) = &span_socket {
        eprintln!("tokenwire-probe: receiving spans on {}", s.path().display());
    }
    if let Some(path) = &args.ready_file {
        let ready = serde_json::json!({
            "pid": std::process::id(),
            "backend": engine.backend().name(),
            "interfaces": names,
            "api": api_addr.map(|a| a.to_string()),
            "spans": span_socket.as_ref().map(|s| s.path().display().to_string()),
        });
        write_atomically(path, ready.to_string().as_bytes())
            .with_context(|| format!("writing {} (--ready-file)", path.display()))?;
    }
    let mut spans_log = match &args.spans_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {} (--spans-log)", p.display()))?,
        ),
        None => None,
    };
    let until = async {
        match args.duration {
            Some(d) => tokio::time::sleep(Duration::from_secs_f64(d.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until, terminated);
    let mut print = tokio::time::interval(Duration::from_secs_f64(args.interval));
    print.tick().await;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(Duration::from_secs_f64(args.interval.min(1.0)));
    let mut snapshot = 0u64;
    let mut buf = vec![0u8; spans::MAX_SPAN_BYTES + 1];
    let emit = |engine: &Engine<_>, snapshot, is_final| {
        let rows = engine.table().rows();
        let (health, evictions) = (engine.health(), engine.table().evictions);
        let text = output::snapshot(
            &rows,
            engine.interfaces(),
            &health,
            evictions,
            snapshot,
            is_final,
            args.json,
        );
        print!("{text}");
    };
    loop {
        let span = async {
            match &span_socket {
                Some(s) => s.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A datagram that filled the buffer was longer than the limit.
            r = span => match r {
                Ok(n) => {
                    if engine.span_datagram(&buf[..n], Instant::now())
                        && let Some(f) = spans_log.as_mut()
                    {
                        use std::io::Write;
                        let line = [&buf[..n], b"\n"].concat();
                        if let Err(e) = f.write_all(&line) {
                            tracing::warn!(error = %e, "writing --spans-log; no more spans are logged");
                            spans_log = None;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "receiving spans"),
            },
            Some(ask) = ask_rx.recv() => {
                let _ = ask.reply.send(engine.answer(ask.query));
            }
            due = tick.tick() => {
                let now = Instant::now();
                engine.loop_lag(now.saturating_duration_since(due.into_std()));
                engine.tick(now);
            }
            _ = refresh.tick() => {
                engine.poll(Instant::now())?;
                if let Some(c) = &carry {
                    save_carry(&engine, c, &mut carried);
                }
            }
            // The refresh tick (at least as often) keeps the table current: printing reads it.
            _ = print.tick() => {
                snapshot += 1;
                if !args.quiet {
                    emit(&engine, snapshot, false);
                }
            }
            _ = &mut terminated => break,
            _ = &mut until => break,
        }
    }
    // Requests still running end `unknown`, with their bytes so far.
    engine.finish_all(Instant::now())?;
    if let Some(c) = &carry {
        save_carry(&engine, c, &mut carried);
    }
    emit(&engine, snapshot + 1, true);
    Ok(())
}

/// Takes over what a previous probe left with the pinned maps: its flow table's state.
fn adopt<B: backend::Backend>(engine: &mut Engine<B>, c: &backend::Carry) {
    let dir = c.dir.display();
    if !c.adopted {
        eprintln!(
            "tokenwire-probe: pinned in {dir}: the classifier stays attached when this probe stops (`tokenwire-probe detach --pin {dir}` removes it)"
        );
        return;
    }
    let carried = std::fs::read(&c.file)
        .map_err(anyhow::Error::from)
        .and_then(|b| {
            tokenwire_probe::table::CarriedTable::from_json(&b, c.generation).map_err(Into::into)
        });
    match carried {
        Ok(t) => {
            let n = engine.carry_in(t, Instant::now());
            eprintln!(
                "tokenwire-probe: adopted the classifier pinned in {dir}: it counted while no probe ran; {n} connections carried over"
            );
        }
        Err(e) => eprintln!(
            "tokenwire-probe: adopted the classifier pinned in {dir} (its counts go on), but not the previous probe's flow table ({}: {e:#}): totals of connections it had evicted start again",
            c.file.display()
        ),
    }
}

/// Writes the flow table's state for the probe that will adopt the pinned maps, unless it
/// is what was written last (`last`).
fn save_carry<B: backend::Backend>(engine: &Engine<B>, c: &backend::Carry, last: &mut Vec<u8>) {
    let bytes = engine.carry_out(c.generation).to_json();
    if bytes == *last {
        return;
    }
    let written = c
        .file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| write_atomically(&c.file, &bytes));
    match written {
        Ok(()) => *last = bytes,
        Err(e) => {
            tracing::warn!(file = %c.file.display(), error = %e, "writing the flow table's state for the next probe")
        }
    }
}

#[cfg(target_os = "linux")]
fn detach(args: DetachArgs) -> Result<()> {
    let d = backend::pin::detach(&args.pin)?;
    println!(
        "detached {}: {} links, {} maps{}",
        args.pin.display(),
        d.links,
        d.maps,
        if d.state_file {
            ", the carried flow table"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn detach(_args: DetachArgs) -> Result<()> {
    bail!("detach removes pinned eBPF programs: Linux only")
}

/// The HTTP endpoints' TLS and gate from `--web-config` and `--metrics-only`.
fn web_gate(
    args: &RunArgs,
) -> Result<(
    Option<tokenwire_probe::web_tls::Acceptor>,
    std::sync::Arc<api::Gate>,
)> {
    let web = match &args.web_config {
        Some(p) => tokenwire_probe::web_config::WebConfig::read(p)?,
        None => tokenwire_probe::web_config::WebConfig::default(),
    };
    let tls = match (&web.tls_server_config, &args.web_config) {
        (Some(t), Some(p)) => Some(tokenwire_probe::web_tls::acceptor(t, p)?),
        _ => None,
    };
    if args.web_config.is_some() {
        eprintln!(
            "tokenwire-probe: web config: {}, {}",
            if tls.is_some() { "TLS" } else { "no TLS" },
            if web.needs_auth() {
                "basic auth"
            } else {
                "no basic auth"
            }
        );
    }
    Ok((
        tls,
        std::sync::Arc::new(api::Gate::new(web, !args.metrics_only)),
    ))
}

/// Writes `path` whole or not at all (a temporary file renamed over it): a reader polling
/// for it never sees half of it.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn analyze(args: AnalyzeArgs) -> Result<()> {
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let spans = match &args.spans {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading spans from {}", p.display()))?;
            let (spans, bad) = spans::read_lines(&text);
            for (line, e) in bad.iter().take(5) {
                eprintln!("tokenwire-probe: {}:{line}: skipped: {e}", p.display());
            }
            if bad.len() > 5 {
                let more = bad.len() - 5;
                eprintln!(
                    "tokenwire-probe: {}: {more} more bad lines skipped",
                    p.display()
                );
            }
            spans
        }
    };
    let a = tokenwire_probe::analyze::analyze(
        std::io::BufReader::new(file),
        labels,
        spans,
        args.passive.options(),
    )
    .with_context(|| format!("reading {}", args.file.display()))?;
    print!(
        "{}",
        a.render(args.json, args.spans.is_some() || !a.requests.is_empty())
    );
    if let Some(e) = a.error {
        bail!(
            "{}: {e} (the totals above count the {} packets before it)",
            args.file.display(),
            a.packets
        );
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn kernel_bench(args: KernelBenchArgs) -> Result<()> {
    use tokenwire_probe::backend::kernel_run::KernelRun;
    let mut k = match &args.object {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            // aya reads the ELF in place: give it 8-byte-aligned bytes.
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            // SAFETY: u64s are 8 bytes of plain data; the slice covers `bytes.len()` of them.
            let view = unsafe {
                std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), bytes.len())
            };
            view.copy_from_slice(&bytes);
            KernelRun::load_object_file(view)
        }
        None => KernelRun::load(),
    }
    .context("loading the eBPF programs")?;
    let r = k
        .bench(args.repeat, args.rounds, args.first_runs)
        .context("running the programs")?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "BPF_PROG_TEST_RUN, median of {} rounds; steady state: {} runs each, first packet: {} single runs",
        r.rounds, r.repeat, r.first_runs
    );
    println!("{:<34} {:>9} {:>14}", "packet", "ns/run", "minus empty");
    for p in &r.packets {
        println!("{:<34} {:>9.1} {:>14.1}", p.name, p.ns, p.minus_empty_ns);
    }
    println!(
        "{:<34} {:>9.1}\n{:<34} {:>9.1}",
        "empty program", r.empty_ns, "empty program, single run", r.empty_single_ns
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn kernel_bench(_args: KernelBenchArgs) -> Result<()> {
    bail!("kernel-bench runs the eBPF programs: Linux only")
}
