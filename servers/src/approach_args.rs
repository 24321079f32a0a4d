//! Command-line arguments built from the approach registry
//! ([`tokenwire_probe_common::approach`]), so that a new approach gets its subcommand and
//! its `all --NAME-listen` without a line here: clap's derive only knows variants and fields
//! written out, so these implement its traits by hand over [`Approach::ALL`].

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokenwire_probe_common::approach::Approach;

/// `tokenwire-servers NAME`: one approach's companion, with `--listen` and the arguments
/// `A` adds (the relay's settings).
#[derive(Debug)]
pub struct CompanionCommand<A> {
    pub approach: Approach,
    pub listen: SocketAddr,
    pub args: A,
}

impl<A: FromArgMatches> FromArgMatches for CompanionCommand<A> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let missing = || clap::Error::new(clap::error::ErrorKind::MissingSubcommand);
        let (name, sub) = m.subcommand().ok_or_else(missing)?;
        let approach = name
            .parse()
            .map_err(|_| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
        let listen = *sub.get_one::<SocketAddr>("listen").ok_or_else(missing)?;
        Ok(Self {
            approach,
            listen,
            args: A::from_arg_matches(sub)?,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<A: Args> Subcommand for CompanionCommand<A> {
    fn augment_subcommands(cmd: Command) -> Command {
        Approach::ALL.iter().fold(cmd, |cmd, a| {
            // The about after `A`'s: a derived `Args` sets its own from its doc comment.
            let about = format!("{} (default {})", a.spec().about, a.default_addr());
            let sub = A::augment_args(Command::new(a.as_str()))
                .about(about)
                .long_about(None)
                .arg(
                    Arg::new("listen")
                        .long("listen")
                        .value_name("ADDR")
                        .help("Address to listen on")
                        .value_parser(clap::value_parser!(SocketAddr))
                        .default_value(a.default_addr().to_string()),
                );
            cmd.subcommand(sub)
        })
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        name.parse::<Approach>().is_ok()
    }
}

/// `--NAME-listen` for every approach: where `all` starts each companion.
#[derive(Debug, Clone)]
pub struct Listens(pub BTreeMap<Approach, SocketAddr>);

impl Listens {
    fn id(a: Approach) -> String {
        format!("{}-listen", a.as_str())
    }

    pub fn get(&self, a: Approach) -> SocketAddr {
        self.0.get(&a).copied().unwrap_or(a.default_addr())
    }
}

impl FromArgMatches for Listens {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = BTreeMap::new();
        for a in Approach::ALL {
            if let Some(addr) = m.get_one::<SocketAddr>(&Self::id(a)) {
                out.insert(a, *addr);
            }
        }
        Ok(Self(out))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for Listens {
    fn augment_args(cmd: Command) -> Command {
        Approach::ALL.iter().fold(cmd, |cmd, a| {
            cmd.arg(
                Arg::new(Self::id(*a))
                    .long(Self::id(*a))
                    .value_name("ADDR")
                    .help(format!("Where the {} companion listens", a.as_str()))
                    .value_parser(clap::value_parser!(SocketAddr))
                    .default_value(a.default_addr().to_string()),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
