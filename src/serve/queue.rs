//! The queue as the server keeps it in memory: the nodes with candidates (and the reward
//! ensemble's scores of them), every feedback record, ask requests, and leases — the pair each
//! labeler was handed and has not answered yet. Since the server is the only writer of the
//! store, the records are appended as answers are stored and the nodes reloaded when a job
//! changes them; nothing is re-read per request.
//!
//! [`Queue`] is the only way in: its methods take the lock themselves and never hand out a guard
//! (see [`super::sync`]). Under the lock they do O(1) work, or O(leases): they copy out a
//! [`Snapshot`] (two `Arc`s) and rank, count and look up on it outside the lock. Reloads are
//! serialized, and an answer recorded while a reload reads the store is kept (merged by id),
//! so a reload can neither lose an answer nor put back an older set of nodes over a newer one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{pair_key, PairKey};
use super::sync::{rank, Guarded};
use super::Scorer;
use crate::feedback::queue::{QueueItem, QueueNode};
use crate::feedback::{self, text_hash, Feedback, FeedbackKind};
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

/// What a reload reads: the nodes with candidates, with everything derived from them.
#[derive(Default)]
pub struct Nodes {
    pub nodes: Vec<QueueNode>,
    /// input key → index into `nodes`.
    by_key: HashMap<String, usize>,
    /// input key → candidate hashes (same order as the node's candidates).
    hashes: HashMap<String, Vec<String>>,
    pub members: MemberScores,
    pub asked: Vec<AskRequest>,
}

impl Nodes {
    fn new(nodes: Vec<QueueNode>, members: MemberScores, asked: Vec<AskRequest>) -> Nodes {
        let by_key = nodes.iter().enumerate().map(|(i, n)| (n.input_key.clone(), i)).collect();
        let hashes = nodes
            .iter()
            .map(|n| (n.input_key.clone(), n.candidates.iter().map(|c| text_hash(c)).collect()))
            .collect();
        Nodes { nodes, by_key, hashes, members, asked }
    }

    /// A node's candidate texts and hashes, if it has candidates.
    pub fn candidates(&self, input_key: &str) -> Option<(&[String], &[String])> {
        let node = &self.nodes[*self.by_key.get(input_key)?];
        Some((&node.candidates, self.hashes.get(input_key)?))
    }

    /// Whether `input_key` is a node's input now (pages can show it), not one a newer run
    /// replaced.
    pub fn is_current(&self, input_key: &str) -> bool {
        self.by_key.get(input_key).is_some_and(|&i| self.nodes[i].book.is_some())
    }

    /// The text of the candidate with hash `hash` of node `input_key`.
    pub fn text(&self, input_key: &str, hash: &str) -> Option<&str> {
        let (texts, hashes) = self.candidates(input_key)?;
        hashes.iter().position(|h| h == hash).map(|i| texts[i].as_str())
    }
}

/// A consistent copy of what the queue holds, taken in O(1).
#[derive(Clone)]
pub struct Snapshot {
    pub nodes: Arc<Nodes>,
    pub records: Arc<Vec<Feedback>>,
}

/// The next item handed to a labeler, with both texts from the same snapshot as the hashes.
#[derive(Debug, Clone)]
pub struct Next {
    pub item: QueueItem,
    pub a_text: String,
    pub b_text: String,
}

struct State {
    nodes: Arc<Nodes>,
    /// Every record (an append copies the vector only when a snapshot of it is alive).
    records: Arc<Vec<Feedback>>,
    ids: HashSet<String>,
    /// (labeler, pair) → index into `records` of that labeler's comparison of the pair.
    compared: HashMap<(String, PairKey), usize>,
    /// pair → how many labelers compared it (the overlap check under the lock reads it).
    judges: HashMap<PairKey, usize>,
    /// labeler → their current lease.
    leases: HashMap<String, Lease>,
}

fn comparison_key(fb: &Feedback) -> Option<(String, PairKey)> {
    match &fb.kind {
        FeedbackKind::Comparison { a, b, .. } => {
            Some((fb.labeler.clone(), pair_key(&fb.input_key, &a.hash, &b.hash)))
        }
        _ => None,
    }
}

impl State {
    fn new(nodes: Nodes, records: Vec<Feedback>) -> State {
        let mut s = State {
            nodes: Arc::new(nodes),
            records: Arc::new(Vec::new()),
            ids: HashSet::new(),
            compared: HashMap::new(),
            judges: HashMap::new(),
            leases: HashMap::new(),
        };
        s.records = Arc::new(Vec::with_capacity(records.len()));
        for r in records {
            s.push(r);
        }
        s
    }

    fn push(&mut self, fb: Feedback) {
        if !self.ids.insert(fb.id.clone()) {
            return;
        }
        if let Some(key) = comparison_key(&fb) {
            if let std::collections::hash_map::Entry::Vacant(e) = self.compared.entry(key) {
                *self.judges.entry(e.key().1.clone()).or_default() += 1;
                e.insert(self.records.len());
            }
        }
        Arc::make_mut(&mut self.records).push(fb);
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.leases.retain(|_, l| l.until > now);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot { nodes: Arc::clone(&self.nodes), records: Arc::clone(&self.records) }
    }

    /// Other labelers' leases as the ranking counts them.
    fn in_flight(&self) -> Vec<InFlight> {
        self.leases
            .iter()
            .map(|(who, l)| InFlight {
                input_key: l.item.input_key.clone(),
                a_hash: l.item.a_hash.clone(),
                b_hash: l.item.b_hash.clone(),
                labeler: who.clone(),
            })
            .collect()
    }
}

/// The queue (see the module docs).
pub struct Queue {
    reload: Guarded<()>,
    state: Guarded<State>,
}

/// Reads the nodes (scored by the reward model when one is given) and the records.
fn read(ws: &Workspace, scorer: Option<&Scorer>) -> Result<(Nodes, Vec<Feedback>)> {
    let nodes = queue::nodes(ws)?;
    let members = match scorer {
        Some(s) => queue::member_scores(ws, &nodes, &s.model, s.encoder.as_ref())?,
        None => MemberScores::new(),
    };
    let asked = queue::asked(ws)?;
    let records = feedback::all(ws.store())?;
    Ok((Nodes::new(nodes, members, asked), records))
}

impl Queue {
    /// Reads the nodes, the records and the ask requests (and scores the nodes with the reward
    /// model when one is given).
    pub fn load(ws: &Workspace, scorer: Option<&Scorer>) -> Result<Queue> {
        let (nodes, records) = read(ws, scorer)?;
        Ok(Queue::from_parts(nodes, records))
    }

    fn from_parts(nodes: Nodes, records: Vec<Feedback>) -> Queue {
        Queue {
            reload: Guarded::new("queue reload", rank::RELOAD, ()),
            state: Guarded::new("queue", rank::QUEUE, State::new(nodes, records)),
        }
    }

    /// Reads the store again (after a job changed it). One reload at a time; answers recorded
    /// while it reads are kept, and leases stay.
    pub fn reload(&self, ws: &Workspace, scorer: Option<&Scorer>) -> Result<()> {
        self.reload.with(|_| {
            // Every record held now was stored before the read below starts.
            let known = self.state.with(|s| s.records.len());
            let (nodes, records) = read(ws, scorer)?;
            self.replace(nodes, records, known);
            Ok(())
        })
    }

    /// Puts freshly read nodes and records in place. Records recorded in memory after the
    /// first `known` ones may have missed the read: they are kept unless the read has them.
    fn replace(&self, nodes: Nodes, records: Vec<Feedback>, known: usize) {
        let mut fresh = State::new(nodes, records);
        self.state.with(|s| {
            for r in s.records.iter().skip(known) {
                fresh.push(r.clone());
            }
            fresh.leases = std::mem::take(&mut s.leases);
            *s = fresh;
        });
    }

    /// What the queue holds now (O(1); read it outside the lock).
    pub fn snapshot(&self) -> Snapshot {
        self.state.with(|s| s.snapshot())
    }

    /// Every feedback record.
    pub fn records(&self) -> Arc<Vec<Feedback>> {
        self.state.with(|s| Arc::clone(&s.records))
    }

    /// The queue for `labeler` (every open item, best first), with others' leases counted.
    /// Ranks outside the lock.
    pub fn items(&self, labeler: Option<&str>, overlap: usize) -> Vec<QueueItem> {
        let (snap, in_flight) = self.state.with(|s| {
            s.expire();
            (s.snapshot(), s.in_flight())
        });
        rank_items(&snap, labeler, overlap, in_flight)
    }

    /// The next item for `labeler` (leased to them): their current lease if still open, else
    /// the best item they did not skip. Ranks outside the lock; the lease is taken under it, and
    /// an item another labeler leased meanwhile is passed over.
    pub fn next(&self, labeler: &str, overlap: usize, skipped: &HashSet<PairKey>) -> Option<Next> {
        let kept = self.state.with(|s| {
            s.expire();
            let lease = s.leases.get(labeler)?.item.clone();
            let key = pair_key(&lease.input_key, &lease.a_hash, &lease.b_hash);
            let open = !skipped.contains(&key)
                && s.nodes.is_current(&lease.input_key)
                && !s.compared.contains_key(&(labeler.to_string(), key))
                && s.nodes.text(&lease.input_key, &lease.a_hash).is_some()
                && s.nodes.text(&lease.input_key, &lease.b_hash).is_some();
            if open {
                Some((lease, Arc::clone(&s.nodes)))
            } else {
                s.leases.remove(labeler);
                None
            }
        });
        if let Some((item, nodes)) = kept {
            return with_texts(item, &nodes);
        }
        let (snap, in_flight) = self.state.with(|s| (s.snapshot(), s.in_flight()));
        let open: Vec<QueueItem> = rank_items(&snap, Some(labeler), overlap, in_flight)
            .into_iter()
            .filter(|i| offerable(i, skipped))
            .collect();
        let chosen = self.lease_first(labeler, overlap, open)?;
        with_texts(chosen, &snap.nodes)
    }

    /// Leases `labeler` the first of `open` (ranked from an earlier snapshot) that is still open
    /// now, under the lock.
    fn lease_first(
        &self,
        labeler: &str,
        overlap: usize,
        open: Vec<QueueItem>,
    ) -> Option<QueueItem> {
        self.state.with(|s| {
            s.expire();
            // What changed since the ranking's snapshot counts too: a pair another labeler leased
            // since, and a pair others leased *and answered* since (the lease is gone then, the
            // answer is not), so the overlap holds however slow the ranking was.
            let mut leased: HashMap<PairKey, usize> = HashMap::new();
            for (who, l) in &s.leases {
                if who.as_str() != labeler {
                    let key = pair_key(&l.item.input_key, &l.item.a_hash, &l.item.b_hash);
                    *leased.entry(key).or_default() += 1;
                }
            }
            let item = open.into_iter().find(|i| {
                let key = pair_key(&i.input_key, &i.a_hash, &i.b_hash);
                let busy = s.judges.get(&key).copied().unwrap_or(0)
                    + leased.get(&key).copied().unwrap_or(0);
                busy < overlap.max(1) && !s.compared.contains_key(&(labeler.to_string(), key))
            })?;
            s.leases.insert(
                labeler.to_string(),
                Lease { item: item.clone(), until: Instant::now() + LEASE },
            );
            Some(item)
        })
    }

    /// The item [`Queue::next`] would hand `labeler` now, leasing nothing (for a request that
    /// may only look).
    pub fn peek(
        &self,
        labeler: &str,
        overlap: usize,
        skipped: &HashSet<PairKey>,
    ) -> Option<QueueItem> {
        self.items(Some(labeler), overlap).into_iter().find(|i| offerable(i, skipped))
    }

    /// `labeler`'s stored comparison of the pair `key`, if any (O(1)).
    pub fn earlier_comparison(&self, labeler: &str, key: &PairKey) -> Option<Feedback> {
        self.state.with(|s| {
            let i = *s.compared.get(&(labeler.to_string(), key.clone()))?;
            s.records.get(i).cloned()
        })
    }

    /// Records a stored answer (and ends the labeler's lease when it answers the leased pair).
    pub fn stored(&self, fb: Feedback) {
        self.state.with(|s| {
            if let Some((who, key)) = comparison_key(&fb) {
                if let Some(l) = s.leases.get(&who) {
                    if pair_key(&l.item.input_key, &l.item.a_hash, &l.item.b_hash) == key {
                        s.leases.remove(&who);
                    }
                }
            }
            s.push(fb);
        });
    }

    /// Ends `labeler`'s lease (a skip).
    pub fn release(&self, labeler: &str) {
        self.state.with(|s| {
            s.leases.remove(labeler);
        });
    }

    /// How many labelers hold a lease now.
    pub fn leases(&self) -> usize {
        self.state.with(|s| {
            s.expire();
            s.leases.len()
        })
    }
}

fn rank_items(
    snap: &Snapshot,
    labeler: Option<&str>,
    overlap: usize,
    in_flight: Vec<InFlight>,
) -> Vec<QueueItem> {
    let filter =
        QueueFilter { labeler: labeler.map(str::to_string), overlap: Some(overlap), in_flight };
    let n = &snap.nodes;
    queue::rank(&n.nodes, &snap.records, &n.members, &n.asked, &filter)
}

/// An item a page can show (its node is placed in a book) that the session did not skip.
fn offerable(i: &QueueItem, skipped: &HashSet<PairKey>) -> bool {
    i.book.is_some()
        && i.node.is_some()
        && !skipped.contains(&pair_key(&i.input_key, &i.a_hash, &i.b_hash))
}

fn with_texts(item: QueueItem, nodes: &Nodes) -> Option<Next> {
    let a_text = nodes.text(&item.input_key, &item.a_hash)?.to_string();
    let b_text = nodes.text(&item.input_key, &item.b_hash)?.to_string();
    Some(Next { item, a_text, b_text })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{Judged, Preference};

    fn node(key: &str, texts: &[&str]) -> QueueNode {
        QueueNode {
            input_key: key.into(),
            height: 0,
            book: Some("book".into()),
            node: Some(format!("h0.{key}")),
            input: format!("the passage {key}"),
            candidates: texts.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn compare(who: &str, key: &str, a: &str, b: &str) -> Feedback {
        let kind = FeedbackKind::Comparison {
            a: Judged::new(a),
            b: Judged::new(b),
            prefer: Preference::A,
            confidence: 5,
        };
        let mut fb = Feedback::new(who, key, &format!("the passage {key}"), 0, kind)
            .at(Some("book".into()), Some(format!("h0.{key}")));
        fb.id = format!("{who}-{key}-{a}-{b}");
        fb
    }

    fn nodes(list: Vec<QueueNode>) -> Nodes {
        Nodes::new(list, MemberScores::new(), Vec::new())
    }

    /// Finding 1 of the web-app issue: a reload read the store, then replaced the live state,
    /// dropping an answer recorded in between.
    #[test]
    fn an_answer_recorded_during_a_reload_is_kept() {
        let q = Queue::from_parts(nodes(vec![node("k1", &["x", "y"])]), Vec::new());
        let known = q.records().len();
        // The reload has read the store (no record yet) when the answer is recorded.
        let fresh = nodes(vec![node("k1", &["x", "y"]), node("k2", &["u", "v"])]);
        let answer = compare("ann", "k1", "x", "y");
        q.stored(answer.clone());
        q.replace(fresh, Vec::new(), known);
        let records = q.records();
        assert_eq!(records.len(), 1, "the answer survived the reload");
        assert_eq!(records[0].id, answer.id);
        // The pair is known as compared: not served to ann again, and a repeat finds it.
        let key = pair_key("k1", &text_hash("x"), &text_hash("y"));
        assert!(q.earlier_comparison("ann", &key).is_some());
        let next = q.next("ann", 1, &HashSet::new()).expect("the new node");
        assert_eq!(next.item.input_key, "k2");
        // A record the read did see is not doubled.
        let known = q.records().len();
        q.replace(nodes(vec![node("k1", &["x", "y"])]), vec![answer.clone()], known);
        q.stored(answer);
        assert_eq!(q.records().len(), 1);
    }

    #[test]
    fn next_serves_texts_of_the_hashes_it_names_and_respects_leases() {
        let q = Queue::from_parts(nodes(vec![node("k1", &["x", "y"])]), Vec::new());
        let first = q.next("ann", 1, &HashSet::new()).expect("an item");
        assert_eq!(text_hash(&first.a_text), first.item.a_hash);
        assert_eq!(text_hash(&first.b_text), first.item.b_hash);
        // Leased to ann: with overlap 1, bob gets nothing; ann gets the same pair again.
        assert!(q.next("bob", 1, &HashSet::new()).is_none());
        assert_eq!(q.next("ann", 1, &HashSet::new()).unwrap().item, first.item);
        // Answered: the lease ends, and the pair is done for ann.
        q.stored(compare("ann", "k1", "x", "y"));
        assert_eq!(q.leases(), 0);
        assert!(q.next("ann", 1, &HashSet::new()).is_none());
        assert!(q.next("bob", 2, &HashSet::new()).is_some());
    }

    /// Found by the load benchmark under a busy CI machine: a pair ranked open for dan went to a
    /// fourth labeler, because between dan's ranking and his lease another labeler leased the
    /// pair *and answered it* (the lease was gone, so the check under the lock missed it).
    #[test]
    fn a_pair_leased_and_answered_while_ranking_is_not_leased_past_the_overlap() {
        let q = Queue::from_parts(nodes(vec![node("k1", &["x", "y"])]), Vec::new());
        // dan ranks from a snapshot where nobody has the pair.
        let (snap, in_flight) = q.state.with(|s| (s.snapshot(), s.in_flight()));
        let stale = rank_items(&snap, Some("dan"), 1, in_flight);
        assert_eq!(stale.len(), 1);
        // Meanwhile ann leases the pair and answers it.
        assert!(q.next("ann", 1, &HashSet::new()).is_some());
        q.stored(compare("ann", "k1", "x", "y"));
        assert_eq!(q.leases(), 0);
        // With overlap 1 the pair is done: dan's stale ranking must not lease it.
        assert!(q.lease_first("dan", 1, stale.clone()).is_none());
        // With overlap 2 it is still open for dan.
        assert!(q.lease_first("dan", 2, stale).is_some());
    }
}
