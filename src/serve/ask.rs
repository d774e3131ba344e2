//! The web app as the person `summarize --ask` asks ([`crate::compose::ask`]): a summarize job
//! started with asking puts each question here, at the head of every labeler's queue (`/next`
//! opens it before any ranked item), and its node waits until someone answers it on the rating
//! screen (`/asks/{id}`) or through the API (`POST /api/asks/{id}`).
//!
//! The answer is written and flushed (an ordinary comparison, with the labeler who gave it)
//! before the page moves on, and only then handed to the waiting job, which uses it to pick the
//! node's summary ([`WebAsker::stores_answers`]: the selector does not store it again). A
//! labeler's second answer to a pair they already compared is not stored twice: the earlier
//! record stands and decides. A question is reserved for a labeler only while its page is open
//! to them ([`HOLD`], renewed each time they view it); `/next` only points at it. A skip answers
//! "no answer" (the ensemble's pick stands). No question stalls its job: one nobody answers
//! within the server's `ask_wait` ends as a skip, and a cancelled job (its own cancel, or the
//! server stopping) withdraws its questions at once. Questions of one job wait side by side, not
//! one after another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::pair_key;
use super::sync::{rank, Guarded};
use super::{Failure, Shared};
use crate::compose::ask::{Answer, Asker, Question};
use crate::compose::select::SelectError;
use crate::feedback::{self, text_hash, Feedback, FeedbackKind, Judged, Preference};

/// A question waiting for its answer.
struct Pending {
    id: u64,
    job: u64,
    question: Question,
    a_hash: String,
    b_hash: String,
    asked: Instant,
    /// The labeler it is reserved for, until when.
    taken: Option<(String, Instant)>,
    reply: SyncSender<Answer>,
}

/// A question as pages and the API show it (blind: no scores, no model names).
#[derive(Debug, Clone, Serialize)]
pub struct AskedView {
    pub id: u64,
    /// The summarize job that waits for it.
    pub job: u64,
    pub book: String,
    pub node: String,
    pub height: u32,
    pub input: String,
    pub input_key: String,
    /// Summary 1 and summary 2, as shown.
    pub a: Shown,
    pub b: Shown,
    pub waiting_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub hash: String,
    pub text: String,
}

/// How long a question stays reserved for the labeler whose page shows it.
pub const HOLD: Duration = Duration::from_secs(120);

/// The questions of running jobs, oldest first.
pub struct AskHub {
    pending: Guarded<Vec<Pending>>,
    next: AtomicU64,
}

impl Default for AskHub {
    fn default() -> AskHub {
        AskHub {
            pending: Guarded::new("questions", rank::LEAF, Vec::new()),
            next: AtomicU64::new(0),
        }
    }
}

impl AskHub {
    fn push(&self, job: u64, question: Question) -> (u64, Receiver<Answer>) {
        let (reply, rx) = mpsc::sync_channel(1);
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let a_hash = text_hash(&question.a);
        let b_hash = text_hash(&question.b);
        self.pending.with(|p| {
            p.push(Pending {
                id,
                job,
                question,
                a_hash,
                b_hash,
                asked: Instant::now(),
                taken: None,
                reply,
            })
        });
        (id, rx)
    }

    /// Withdraws every question of job `job` (it ended): each waiting node goes on as skipped.
    pub fn withdraw_job(&self, job: u64) {
        self.pending.with(|p| p.retain(|p| p.job != job));
    }

    fn withdraw(&self, id: u64) {
        self.pending.with(|p| p.retain(|p| p.id != id));
    }

    fn view(p: &Pending) -> AskedView {
        AskedView {
            id: p.id,
            job: p.job,
            book: p.question.book_id.clone(),
            node: p.question.label.clone(),
            height: p.question.height,
            input: p.question.input.clone(),
            input_key: p.question.input_key.clone(),
            a: Shown { hash: p.a_hash.clone(), text: p.question.a.clone() },
            b: Shown { hash: p.b_hash.clone(), text: p.question.b.clone() },
            waiting_s: p.asked.elapsed().as_secs(),
        }
    }

    /// Every waiting question, oldest first.
    pub fn all(&self) -> Vec<AskedView> {
        self.pending.with(|p| p.iter().map(AskHub::view).collect())
    }

    pub fn get(&self, id: u64) -> Option<AskedView> {
        self.pending.with(|p| p.iter().find(|p| p.id == id).map(AskHub::view))
    }

    /// How many questions wait.
    pub fn len(&self) -> usize {
        self.pending.with(|p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest question `labeler` may answer (not reserved for someone else). Reserves
    /// nothing: [`AskHub::open_for`] does, when its page is shown.
    pub fn next_for(&self, labeler: &str) -> Option<u64> {
        let now = Instant::now();
        self.pending.with(|pending| {
            pending
                .iter()
                .find(|p| match &p.taken {
                    Some((who, until)) => who == labeler || *until <= now,
                    None => true,
                })
                .map(|p| p.id)
        })
    }

    /// Question `id` shown to `labeler`: reserved for them for [`HOLD`] from now. Refused while
    /// another labeler holds it.
    pub fn open_for(&self, id: u64, labeler: &str) -> Result<AskedView, Failure> {
        let now = Instant::now();
        self.pending.with(|pending| {
            let Some(p) = pending.iter_mut().find(|p| p.id == id) else {
                return Err(Failure::not_found(format!(
                    "no waiting question {id}: it was answered already, or its job ended (press n)"
                )));
            };
            if let Some((who, until)) = &p.taken {
                if who != labeler && *until > now {
                    return Err(Failure::new(
                        axum::http::StatusCode::CONFLICT,
                        format!("question {id} is being answered by another labeler (press n)"),
                    ));
                }
            }
            p.taken = Some((labeler.to_string(), now + HOLD));
            Ok(AskHub::view(p))
        })
    }

    /// Takes question `id` out for `labeler` to answer (refused when it is reserved for another).
    fn take(&self, id: u64, labeler: &str) -> Result<Pending, Failure> {
        let now = Instant::now();
        self.pending.with(|pending| {
            let Some(i) = pending.iter().position(|p| p.id == id) else {
                return Err(Failure::not_found(format!(
                    "no waiting question {id}: it was answered already, or its job ended"
                )));
            };
            if let Some((who, until)) = &pending[i].taken {
                if who != labeler && *until > now {
                    return Err(Failure::new(
                        axum::http::StatusCode::CONFLICT,
                        format!("question {id} is being answered by another labeler"),
                    ));
                }
            }
            Ok(pending.remove(i))
        })
    }

    /// Puts a taken question back (its answer could not be stored).
    fn restore(&self, p: Pending) {
        self.pending.with(|pending| {
            let at = pending.iter().position(|q| q.id > p.id).unwrap_or(pending.len());
            pending.insert(at, p);
        });
    }
}

/// What a labeler answered to a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `judge_ms`: how long the answer took, when the page measured it.
    Prefer {
        prefer: Preference,
        confidence: u8,
        judge_ms: Option<u64>,
    },
    Skip,
}

/// Answers question `id` as `labeler`: `a` and `b` name the shown summaries (by hash, as the
/// rating screen sends them). A preference is stored and flushed first, then handed to the job.
/// Returns the stored record (none for a skip). Blocking: call it on the blocking pool.
pub fn answer(
    state: &Shared,
    id: u64,
    labeler: &str,
    a: &str,
    b: &str,
    reply: Reply,
) -> Result<Option<Feedback>, Failure> {
    let p = state.asks.take(id, labeler)?;
    let (prefer, confidence, judge_ms) = match reply {
        Reply::Skip => {
            let _ = p.reply.try_send(Answer::Skip);
            return Ok(None);
        }
        Reply::Prefer { prefer, confidence, judge_ms } => (prefer, confidence, judge_ms),
    };
    // The page names the pair as shown; the other order flips the preference.
    let prefer = if a == p.a_hash && b == p.b_hash {
        prefer
    } else if a == p.b_hash && b == p.a_hash {
        match prefer {
            Preference::A => Preference::B,
            Preference::B => Preference::A,
            Preference::Tie => Preference::Tie,
        }
    } else {
        let shown = format!(
            "{}…, {}…",
            &p.a_hash[..8.min(p.a_hash.len())],
            &p.b_hash[..8.min(p.b_hash.len())]
        );
        state.asks.restore(p);
        return Err(Failure::bad_request(format!(
            "question {id} is about the summaries {shown}; a and b must name those two"
        )));
    };
    if !(1..=9).contains(&confidence) {
        state.asks.restore(p);
        return Err(Failure::bad_request(format!(
            "confidence must be from 1 to 9 (got {confidence})"
        )));
    }
    let q = &p.question;
    // A labeler who compared this pair already (on the rating screen, or an earlier question)
    // gave their opinion: it is not stored twice, and it decides here as it is stored.
    let key = pair_key(&q.input_key, &p.a_hash, &p.b_hash);
    let (fb, prefer, confidence) = match state.queue.earlier_comparison(labeler, &key) {
        Some(earlier) => {
            let (prefer, confidence) = match &earlier.kind {
                FeedbackKind::Comparison { a, prefer: earlier_prefer, confidence, .. } => {
                    // Stored as (a, b) of its own order: put it in the question's order.
                    let same = a.hash == p.a_hash;
                    let prefer = match (earlier_prefer, same) {
                        (Preference::A, false) => Preference::B,
                        (Preference::B, false) => Preference::A,
                        (other, _) => *other,
                    };
                    (prefer, *confidence)
                }
                _ => (prefer, confidence),
            };
            (earlier, prefer, confidence)
        }
        None => {
            let kind = FeedbackKind::Comparison {
                a: Judged::new(q.a.clone()),
                b: Judged::new(q.b.clone()),
                prefer,
                confidence,
            };
            let mut fb = Feedback::new(labeler, &q.input_key, &q.input, q.height, kind)
                .at(Some(q.book_id.clone()), Some(q.label.clone()))
                .timed(judge_ms);
            match feedback::put(state.ws.store(), fb.clone()) {
                Ok(stored_id) => fb.id = stored_id,
                Err(e) => {
                    state.asks.restore(p);
                    return Err(Failure::from(e));
                }
            }
            state.queue.stored(fb.clone());
            (fb, prefer, confidence)
        }
    };
    let answer = match prefer {
        Preference::A => Answer::A { confidence },
        Preference::B => Answer::B { confidence },
        Preference::Tie => Answer::Tie { confidence },
    };
    // The job may have ended meanwhile (the server stopping): the record is stored regardless.
    let _ = p.reply.try_send(answer);
    Ok(Some(fb))
}

/// The [`Asker`] of a summarize job inside the server: puts each question into the hub and
/// waits (on the composer's blocking thread) for a labeler's answer.
pub struct WebAsker {
    pub hub: Arc<AskHub>,
    pub job: u64,
    /// True once the job is cancelled (on its own, or by the server stopping): waiting
    /// questions are withdrawn and end as skips.
    pub cancelled: Box<dyn Fn() -> bool + Send + Sync>,
    /// A question nobody answers within this long ends as a skip (the ensemble's pick stands).
    pub max_wait: Duration,
}

impl Asker for WebAsker {
    fn labeler(&self) -> String {
        // Each answer is stored with the labeler who gave it (see `stores_answers`).
        "web".into()
    }

    fn stores_answers(&self) -> bool {
        true
    }

    fn one_at_a_time(&self) -> bool {
        // Many labelers: every node the ensemble is unsure of may wait at once.
        false
    }

    fn ask(&self, question: &Question) -> Result<Answer, SelectError> {
        if (self.cancelled)() {
            return Ok(Answer::Skip);
        }
        let (id, rx) = self.hub.push(self.job, question.clone());
        let deadline = Instant::now() + self.max_wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(answer) => return Ok(answer),
                Err(RecvTimeoutError::Timeout) => {
                    if (self.cancelled)() || Instant::now() >= deadline {
                        self.hub.withdraw(id);
                        // An answer that came in between still counts.
                        return Ok(rx.try_recv().unwrap_or(Answer::Skip));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(Answer::Skip),
            }
        }
    }
}

/// The asking settings a form or query gives as strings: `ask` (`1`/`on`/`true` to ask),
/// `best_of` (2–16, default 2), `budget` (questions, empty: no limit), `threshold` (> 0,
/// default 1), `order` (`ranked`, the default, or `arrival`; see [`AskSettings::ranked`]).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct AskParams {
    pub ask: String,
    pub best_of: String,
    pub budget: String,
    pub threshold: String,
    pub order: String,
}

impl AskParams {
    pub fn settings(&self) -> Result<Option<AskSettings>, Failure> {
        if !matches!(self.ask.trim(), "1" | "on" | "true" | "yes") {
            return Ok(None);
        }
        let mut s = AskSettings::default();
        if !self.best_of.trim().is_empty() {
            s.best_of = match self.best_of.trim().parse::<usize>() {
                Ok(n) if (2..=16).contains(&n) => n,
                _ => return Err(Failure::bad_request("best_of must be a number from 2 to 16")),
            };
        }
        if !self.budget.trim().is_empty() {
            s.budget = match self.budget.trim().parse::<usize>() {
                Ok(n) if n <= 100_000 => Some(n),
                _ => return Err(Failure::bad_request("budget must be a number of questions")),
            };
        }
        if !self.threshold.trim().is_empty() {
            s.threshold = match self.threshold.trim().parse::<f32>() {
                Ok(t) if t.is_finite() && t > 0.0 => t,
                _ => return Err(Failure::bad_request("threshold must be a positive number")),
            };
        }
        s.ranked = match self.order.trim() {
            "" | "ranked" => true,
            "arrival" => false,
            _ => return Err(Failure::bad_request("order must be `ranked` or `arrival`")),
        };
        Ok(Some(s))
    }
}

/// `summarize --ask` inside the server: where the reward ensemble cannot tell a node's two best
/// candidates apart, the job asks the labelers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AskSettings {
    /// Candidates drawn per node to choose between (2 or more).
    pub best_of: usize,
    /// Ask when the ensemble's two best are closer than `threshold` times the spread of their
    /// difference. Without a reward model the job asks at every node (within the budget): there
    /// is no uncertainty to measure.
    pub threshold: f32,
    /// At most this many questions (`None`: no limit).
    pub budget: Option<usize>,
    /// With a budget and a reward model: compose the book once without asking and spend the
    /// budget on the nodes where the ensemble is least sure (the first question waits for that
    /// pass), rather than on unsure nodes in the order they finish.
    pub ranked: bool,
}

impl Default for AskSettings {
    fn default() -> AskSettings {
        AskSettings { best_of: 2, threshold: 1.0, budget: None, ranked: true }
    }
}
