//! The requests of one passively read connection: each request and, once it comes, its
//! answer, paired in order (pipelining included) from the HTTP readers' events, with the
//! tokens, gaps and outcome its answer showed.

use super::decoder::Decoder;
use super::http::{HttpEvent, HttpReader, RequestHead};
use super::stream::decoder_for;
use super::{MAX_PIPELINED, MAX_TOKEN_TIMES};
use crate::attribution::Snapshot;
use crate::llm::Family;
use crate::spans::Outcome;
use std::collections::VecDeque;

/// A request and, once it comes, its answer.
pub(super) struct Req {
    pub(super) seq_on_connection: u32,
    pub(super) head: RequestHead,
    pub(super) family: Option<Family>,
    pub(super) start_ns: u64,
    pub(super) request_end_ns: Option<u64>,
    pub(super) own: Snapshot,
    pub(super) status: Option<u16>,
    pub(super) content_type: Option<String>,
    /// The answer is informational (1xx): its end is not the request's.
    pub(super) informational: bool,
    pub(super) decoder: Option<Box<dyn Decoder>>,
    pub(super) tokens: u64,
    pub(super) app_bytes: u64,
    pub(super) first_token_ns: Option<u64>,
    pub(super) last_token_ns: Option<u64>,
    pub(super) gaps: Vec<u64>,
    pub(super) end_ns: Option<u64>,
    pub(super) incomplete: Option<&'static str>,
}

impl Req {
    pub(super) fn tokens(&mut self, n: u64, t: u64) {
        if n == 0 {
            return;
        }
        if self.first_token_ns.is_none() {
            self.first_token_ns = Some(t);
        } else if let Some(last) = self.last_token_ns
            && self.gaps.len() < MAX_TOKEN_TIMES
        {
            self.gaps.push(t.saturating_sub(last));
        }
        // The packet's further tokens arrived with it: 0 apart.
        let more = (n - 1) as usize;
        let room = MAX_TOKEN_TIMES.saturating_sub(self.gaps.len());
        self.gaps.extend(std::iter::repeat_n(0, more.min(room)));
        self.last_token_ns = Some(t);
        self.tokens += n;
    }

    pub(super) fn mark(&mut self, why: &'static str) {
        self.incomplete.get_or_insert(why);
    }
}

/// The requests of a connection: what the readers' events change.
#[derive(Default)]
pub(super) struct Track {
    /// Requests whose answer has not ended, oldest first (more than one when pipelined).
    pub(super) queue: VecDeque<Req>,
    /// The last request whose answer ended: it owns the packets until the next starts.
    pub(super) done: Option<Req>,
    /// Requests that are final, waiting to be reported.
    pub(super) finished: Vec<Req>,
    pub(super) served: u32,
    pub(super) setup: Snapshot,
    /// A new request's head came in the packet being read.
    pub(super) started: bool,
    /// Too many pipelined requests: reading stopped.
    pub(super) overflow: bool,
}

impl Track {
    pub(super) fn on_request(&mut self, e: HttpEvent<'_>, t: u64, responses: &mut HttpReader) {
        match e {
            HttpEvent::Request(head) => {
                if self.queue.len() >= MAX_PIPELINED {
                    self.overflow = true;
                    return;
                }
                responses.expect(head.method.eq_ignore_ascii_case("HEAD"));
                self.served += 1;
                if let Some(d) = self.done.take() {
                    self.finished.push(d);
                }
                self.started = true;
                self.queue.push_back(Req {
                    seq_on_connection: self.served,
                    family: Family::of_path(&head.path),
                    head,
                    start_ns: t,
                    request_end_ns: None,
                    own: Snapshot::default(),
                    status: None,
                    content_type: None,
                    informational: false,
                    decoder: None,
                    tokens: 0,
                    app_bytes: 0,
                    first_token_ns: None,
                    last_token_ns: None,
                    gaps: Vec::new(),
                    end_ns: None,
                    incomplete: None,
                });
            }
            HttpEvent::End => {
                if let Some(r) = self.queue.back_mut() {
                    r.request_end_ns = Some(t);
                }
            }
            HttpEvent::Response(_) | HttpEvent::Body(_) | HttpEvent::BodyGap(_) => {}
        }
    }

    /// The request an answer's bytes belong to: the oldest not yet answered.
    pub(super) fn answered(&mut self) -> Option<&mut Req> {
        self.queue.front_mut()
    }

    pub(super) fn on_response(&mut self, e: HttpEvent<'_>, t: u64) {
        match e {
            HttpEvent::Response(head) => {
                let Some(r) = self.answered() else { return };
                r.informational = (100..200).contains(&head.status);
                if r.informational {
                    return;
                }
                r.decoder = r.family.and_then(|_| decoder_for(&head.content_type));
                r.status = Some(head.status);
                r.content_type = Some(head.content_type);
            }
            HttpEvent::Body(b) => {
                let Some(r) = self.answered() else { return };
                r.app_bytes += b.len() as u64;
                if let Some(d) = r.decoder.as_mut() {
                    let n = d.feed(b);
                    r.tokens(n, t);
                }
            }
            HttpEvent::BodyGap(n) => {
                let Some(r) = self.answered() else { return };
                r.app_bytes += n;
                if let Some(d) = r.decoder.as_mut() {
                    d.gap();
                    r.mark("payload_lost");
                }
            }
            HttpEvent::End => {
                let Some(r) = self.answered() else { return };
                if std::mem::take(&mut r.informational) {
                    return;
                }
                if let Some(d) = r.decoder.as_mut() {
                    let n = d.finish();
                    r.tokens(n, t);
                }
                r.end_ns = Some(t);
                if let Some(r) = self.queue.pop_front() {
                    if self.queue.is_empty() {
                        self.done = Some(r);
                    } else {
                        self.finished.push(r);
                    }
                }
            }
            HttpEvent::Request(_) => {}
        }
    }

    /// The request that owns a packet that is not a request's own bytes.
    pub(super) fn owner(&mut self) -> Option<&mut Req> {
        match self.queue.front_mut() {
            Some(r) => Some(r),
            None => self.done.as_mut(),
        }
    }

    /// The newest request (a client packet that carried request bytes belongs to it).
    pub(super) fn newest(&mut self) -> Option<&mut Req> {
        match self.queue.back_mut() {
            Some(r) => Some(r),
            None => self.done.as_mut(),
        }
    }
}

/// How a request ended, from what its answer said.
pub(super) fn outcome(r: &Req, conn_ended: bool) -> Outcome {
    let usage = r.decoder.as_ref().map(|d| d.usage());
    match (r.status, r.end_ns) {
        (Some(s), _) if s >= 400 => Outcome::Error,
        _ if usage.is_some_and(|u| u.error) => Outcome::Error,
        (Some(_), Some(_)) => Outcome::Ok,
        // The connection ended before the answer did: the client (or server) went away.
        _ if conn_ended => Outcome::Aborted,
        _ => Outcome::Unknown,
    }
}
