//! Finished requests and connections: the newest `keep` of each, for /api/requests,
//! /api/connections and `analyze`. Fed by attribution's events; bounded whatever the load.

use crate::attribution::{ConnectionRecord, RequestRecord};
use std::collections::VecDeque;

pub struct Records {
    requests: VecDeque<RequestRecord>,
    connections: VecDeque<ConnectionRecord>,
    keep: usize,
}

impl Records {
    /// Keeps the last `keep` (at least one) of each.
    pub fn new(keep: usize) -> Self {
        Self {
            requests: VecDeque::new(),
            connections: VecDeque::new(),
            keep: keep.max(1),
        }
    }

    pub fn push_request(&mut self, r: RequestRecord) {
        if self.requests.len() == self.keep {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }

    pub fn push_connection(&mut self, c: ConnectionRecord) {
        if self.connections.len() == self.keep {
            self.connections.pop_front();
        }
        self.connections.push_back(c);
    }

    /// Final requests, oldest first.
    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.requests.iter()
    }

    /// Finished connections, oldest first.
    pub fn connections(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.connections.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Snapshot;

    fn conn(requests: u32) -> ConnectionRecord {
        ConnectionRecord {
            approach: "sse".into(),
            transport: "tls",
            client: "127.0.0.1:1".parse().unwrap(),
            server: "127.0.0.1:2".parse().unwrap(),
            requests,
            first_start_unix_ns: 0,
            setup: Snapshot::default(),
            teardown: Snapshot::default(),
            total: Snapshot::default(),
            closed_unix_ns: None,
            is_final: true,
        }
    }

    #[test]
    fn keeps_the_newest() {
        let mut r = Records::new(2);
        for i in 1..=3 {
            r.push_connection(conn(i));
        }
        let kept: Vec<u32> = r.connections().map(|c| c.requests).collect();
        assert_eq!(kept, [2, 3]);
    }
}
