//! The model and every approach's companion, started in-process: the one way the tests, the
//! bench's matrix and anything else that runs them beside itself start them.
//!
//! `Stack::ephemeral()` binds every server to a port of the kernel's choosing on 127.0.0.1
//! (tests run side by side); `Stack::on(host)` binds the registry's default ports on `host`.
//! The browser page's companion starts last, told where the others ended up.

use crate::certs::Identity;
use crate::launch::{self, LaunchError, RelayOptions, Running};
use crate::model::{Model, ModelConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Index;
use std::time::Duration;
use tokenwire_probe_common::approach::{Approach, MODEL_LABEL, MODEL_PORT};
use tokio_util::sync::CancellationToken;

/// What to start, before it starts: [`Stack::ephemeral`] or [`Stack::on`], then the
/// settings that differ from the defaults, then [`StackBuilder::start`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    host: IpAddr,
    ephemeral: bool,
    model: Option<ModelConfig>,
    relay: RelayOptions,
    grace: Duration,
    approaches: Vec<Approach>,
}

/// The started servers; dropping it shuts them down.
pub struct Stack {
    /// The embedded model and its server (`None` with [`StackBuilder::no_model`]).
    embedded: Option<(Running, Model)>,
    /// Each started approach's companion.
    pub companions: BTreeMap<Approach, Running>,
    /// The relays' options as they started (the upstream filled in).
    pub relay: RelayOptions,
    pub shutdown: CancellationToken,
}

impl Stack {
    /// Every server on a port the kernel picks, on 127.0.0.1.
    pub fn ephemeral() -> StackBuilder {
        StackBuilder::new(Ipv4Addr::LOCALHOST.into(), true)
    }

    /// Every server on its registry port (the model on [`MODEL_PORT`]) at `host`.
    pub fn on(host: IpAddr) -> StackBuilder {
        StackBuilder::new(host, false)
    }

    /// `approach`'s companion, if it was started.
    pub fn companion(&self, approach: Approach) -> Option<&Running> {
        self.companions.get(&approach)
    }

    /// Where each started companion listens.
    pub fn addrs(&self) -> BTreeMap<Approach, SocketAddr> {
        self.companions.iter().map(|(a, r)| (*a, r.addr)).collect()
    }

    /// The model's address, when the stack runs it.
    pub fn model_addr(&self) -> Option<SocketAddr> {
        self.embedded.as_ref().map(|(r, _)| r.addr)
    }

    /// The embedded model; panics if the builder left it out ([`StackBuilder::no_model`]).
    pub fn model(&self) -> &Model {
        &self.embedded.as_ref().expect("the stack runs no model").1
    }

    /// The embedded model's server; panics if the builder left it out.
    pub fn model_run(&self) -> &Running {
        &self.embedded.as_ref().expect("the stack runs no model").0
    }

    /// Every server's [`Running`] (to await its task after [`Stack::shutdown`]); the
    /// servers stop as the stack is dropped here.
    pub fn into_running(mut self) -> Vec<Running> {
        let model = self.embedded.take().map(|(r, _)| r);
        std::mem::take(&mut self.companions)
            .into_values()
            .chain(model)
            .collect()
    }

    /// The probe's `--label PORT=NAME` for each server: needed when the ports are not the
    /// registry's.
    pub fn labels(&self) -> Vec<String> {
        let model = self
            .model_addr()
            .map(|a| format!("{}={MODEL_LABEL}", a.port()));
        self.companions
            .iter()
            .map(|(a, r)| format!("{}={}", r.addr.port(), a.label()))
            .chain(model)
            .collect()
    }
}

impl Index<Approach> for Stack {
    type Output = Running;

    /// `approach`'s companion; panics if the builder left it out ([`StackBuilder::only`]).
    fn index(&self, approach: Approach) -> &Running {
        self.companion(approach)
            .unwrap_or_else(|| panic!("the stack has no {approach} companion"))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl StackBuilder {
    fn new(host: IpAddr, ephemeral: bool) -> Self {
        Self {
            host,
            ephemeral,
            model: Some(ModelConfig::default()),
            relay: RelayOptions::default(),
            grace: Duration::from_secs(1),
            approaches: Approach::ALL.to_vec(),
        }
    }

    /// The embedded model runs `cfg`.
    pub fn model(mut self, cfg: ModelConfig) -> Self {
        self.model = Some(cfg);
        self
    }

    /// No embedded model: the relays use `relay.upstream` as given.
    pub fn no_model(mut self) -> Self {
        self.model = None;
        self
    }

    /// The relays' options (their `upstream` is the embedded model's, when it runs).
    pub fn relay(mut self, opts: RelayOptions) -> Self {
        self.relay = opts;
        self
    }

    /// How long in-flight streams get to finish at shutdown (1 s by default).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Only these approaches' companions.
    pub fn only(mut self, approaches: &[Approach]) -> Self {
        self.approaches = approaches.to_vec();
        self
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, if self.ephemeral { 0 } else { port })
    }

    /// Starts the model, then the companions, the page's last.
    pub async fn start(self, id: &Identity) -> Result<Stack, LaunchError> {
        let shutdown = CancellationToken::new();
        let mut stack = Stack {
            embedded: None,
            companions: BTreeMap::new(),
            relay: self.relay.clone(),
            shutdown: shutdown.clone(),
        };
        if let Some(cfg) = self.model.clone() {
            let started =
                launch::start_model(self.addr(MODEL_PORT), cfg, shutdown.clone(), self.grace)
                    .await?;
            stack.relay.upstream = started.0.url.clone();
            stack.embedded = Some(started);
        }
        let origin = crate::page::ORIGIN;
        let (last, first): (Vec<Approach>, Vec<Approach>) =
            self.approaches.iter().partition(|a| **a == origin);
        for a in first.into_iter().chain(last) {
            if a == origin
                && let Some(links) = &mut stack.relay.page
            {
                for (other, r) in &stack.companions {
                    links.ports.insert(*other, r.addr.port());
                }
            }
            let addr = self.addr(a.port());
            let r =
                launch::start_companion(a, addr, id, &stack.relay, shutdown.clone(), self.grace)
                    .await?;
            stack.companions.insert(a, r);
        }
        Ok(stack)
    }
}
