//! The queue as the server keeps it in memory: the nodes with candidates (and the reward
//! ensemble's scores of them), every feedback record, ask requests, and leases — the pair each
//! labeler was handed and has not answered yet. Since the server is the only writer of the
//! store, the records are appended as answers are stored and the nodes reloaded when a job
//! changes them; nothing is re-read per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::auth::{pair_key, PairKey};
use super::Scorer;
use crate::feedback::queue::{QueueItem, QueueNode};
use crate::feedback::{self, text_hash, Feedback};
use crate::workspace::queue::{self, AskRequest, InFlight, MemberScores, QueueFilter};
use crate::workspace::{Result, Workspace};

/// How long a handed-out pair stays reserved for its labeler.
pub const LEASE: Duration = Duration::from_secs(15 * 60);

/// A pair handed to a labeler.
#[derive(Debug, Clone)]
pub struct Lease {
    pub item: QueueItem,
    pub until: Instant,
}

pub struct QueueState {
    pub nodes: Vec<QueueNode>,
    /// input key → index into `nodes`.
    by_key: HashMap<String, usize>,
    /// input key → candidate hashes (same order as the node's candidates).
    hashes: HashMap<String, Vec<String>>,
    pub members: MemberScores,
    pub asked: Vec<AskRequest>,
    pub records: Vec<Feedback>,
    ids: std::collections::HashSet<String>,
    /// labeler → their current lease.
    pub leases: HashMap<String, Lease>,
}

impl QueueState {
    /// Reads the nodes, the records and the ask requests (and scores the nodes with the reward
    /// model when one is given).
    pub fn load(ws: &Workspace, scorer: Option<&Scorer>) -> Result<QueueState> {
        let nodes = queue::nodes(ws)?;
        let members = match scorer {
            Some(s) => queue::member_scores(ws, &nodes, &s.model, s.encoder.as_ref())?,
            None => MemberScores::new(),
        };
        let records = feedback::all(ws.store())?;
        let asked = queue::asked(ws)?;
        Ok(QueueState::from_parts(nodes, members, asked, records))
    }

    fn from_parts(
        nodes: Vec<QueueNode>,
        members: MemberScores,
        asked: Vec<AskRequest>,
        records: Vec<Feedback>,
    ) -> QueueState {
        let by_key = nodes.iter().enumerate().map(|(i, n)| (n.input_key.clone(), i)).collect();
        let hashes = nodes
            .iter()
            .map(|n| (n.input_key.clone(), n.candidates.iter().map(|c| text_hash(c)).collect()))
            .collect();
        let ids = records.iter().map(|r| r.id.clone()).collect();
        QueueState { nodes, by_key, hashes, members, asked, records, ids, leases: HashMap::new() }
    }

    /// Takes fresh nodes, scores and ask requests (and records) from `fresh`, keeping leases.
    pub fn replace_nodes(&mut self, fresh: QueueState) {
        let leases = std::mem::take(&mut self.leases);
        *self = fresh;
        self.leases = leases;
    }

    /// A node's candidate texts and hashes, if it has candidates.
    pub fn candidates(&self, input_key: &str) -> Option<(&[String], &[String])> {
        let node = &self.nodes[*self.by_key.get(input_key)?];
        Some((&node.candidates, self.hashes.get(input_key)?))
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.leases.retain(|_, l| l.until > now);
    }

    /// The queue for `labeler` (every open item, best first), with others' leases counted.
    pub fn items(&mut self, labeler: Option<&str>, overlap: usize) -> Vec<QueueItem> {
        self.expire();
        let in_flight = self
            .leases
            .iter()
            .map(|(who, l)| InFlight {
                input_key: l.item.input_key.clone(),
                a_hash: l.item.a_hash.clone(),
                b_hash: l.item.b_hash.clone(),
                labeler: who.clone(),
            })
            .collect();
        let filter =
            QueueFilter { labeler: labeler.map(str::to_string), overlap: Some(overlap), in_flight };
        queue::rank(&self.nodes, &self.records, &self.members, &self.asked, &filter)
    }

    /// The next item for `labeler` (leased to them): their current lease if still open, else
    /// the best item they did not skip.
    pub fn next(
        &mut self,
        labeler: &str,
        overlap: usize,
        skipped: &std::collections::HashSet<PairKey>,
    ) -> Option<QueueItem> {
        self.expire();
        if let Some(lease) = self.leases.get(labeler) {
            let key = pair_key(&lease.item.input_key, &lease.item.a_hash, &lease.item.b_hash);
            if !skipped.contains(&key) && !self.compared_by(labeler, &key) {
                return Some(lease.item.clone());
            }
        }
        self.leases.remove(labeler);
        let item = self.items(Some(labeler), overlap).into_iter().find(|i| {
            i.book.is_some()
                && i.node.is_some()
                && !skipped.contains(&pair_key(&i.input_key, &i.a_hash, &i.b_hash))
        })?;
        self.leases.insert(
            labeler.to_string(),
            Lease { item: item.clone(), until: Instant::now() + LEASE },
        );
        Some(item)
    }

    fn compared_by(&self, labeler: &str, key: &PairKey) -> bool {
        self.records.iter().any(|r| {
            r.labeler == labeler
                && r.input_key == key.0
                && matches!(&r.kind, feedback::FeedbackKind::Comparison { a, b, .. }
                    if pair_key(&r.input_key, &a.hash, &b.hash) == *key)
        })
    }

    /// Records a stored answer (and ends the labeler's lease when it answers the leased pair).
    pub fn stored(&mut self, fb: Feedback) {
        if let feedback::FeedbackKind::Comparison { a, b, .. } = &fb.kind {
            let key = pair_key(&fb.input_key, &a.hash, &b.hash);
            if let Some(l) = self.leases.get(&fb.labeler) {
                if pair_key(&l.item.input_key, &l.item.a_hash, &l.item.b_hash) == key {
                    self.leases.remove(&fb.labeler);
                }
            }
        }
        if self.ids.insert(fb.id.clone()) {
            self.records.push(fb);
        }
    }

    /// Ends `labeler`'s lease (a skip).
    pub fn release(&mut self, labeler: &str) {
        self.leases.remove(labeler);
    }
}
