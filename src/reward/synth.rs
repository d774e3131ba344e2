//! Synthetic books, passages and candidate summaries of known quality, for testing and
//! benchmarking the feedback → reward model → best-of-N loop without a policy model or people.
//!
//! Every text is generated here from small word lists. A passage tells what a book's
//! characters do, where, with what, among filler sentences; candidates range from extractive
//! summaries (good coverage) through mixed and off-topic ones to long padded ones, so a
//! [`SimLabeler`](crate::feedback::sim::SimLabeler) ranks them in a way a model can learn from the
//! texts alone. Height-1 inputs join several height-0 summaries as the composer does.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::compose::prompt::join_children;

const NAMES: &[&str] = &[
    "Marigold",
    "Theodora",
    "Ezekiel",
    "Rosalind",
    "Barnaby",
    "Cressida",
    "Octavian",
    "Winifred",
    "Leopold",
    "Ophelia",
    "Caspian",
    "Henrietta",
    "Ignatius",
    "Philippa",
    "Augustin",
    "Beatrix",
    "Cornelius",
    "Drusilla",
    "Fitzgerald",
    "Gwendolyn",
    "Horatio",
    "Isadora",
    "Jeremiah",
    "Lavinia",
    "Montague",
    "Persephone",
    "Quentin",
    "Seraphina",
    "Tobias",
    "Valentina",
];
const PLACES: &[&str] = &[
    "mill",
    "harbour",
    "lighthouse",
    "orchard",
    "cathedral",
    "market",
    "forge",
    "vineyard",
    "library",
    "garrison",
    "monastery",
    "quarry",
    "tavern",
    "shipyard",
    "observatory",
    "granary",
    "bakery",
    "courthouse",
    "greenhouse",
    "armoury",
];
const OBJECTS: &[&str] = &[
    "lantern",
    "letter",
    "sword",
    "compass",
    "ledger",
    "necklace",
    "telescope",
    "violin",
    "saddle",
    "anchor",
    "portrait",
    "hourglass",
    "parchment",
    "chalice",
    "spyglass",
    "kettle",
    "tapestry",
    "medallion",
    "harpoon",
    "almanac",
];
const VERBS: &[&str] = &[
    "hid",
    "stole",
    "repaired",
    "buried",
    "sold",
    "painted",
    "found",
    "burned",
    "carried",
    "guarded",
    "examined",
    "polished",
    "traded",
    "dropped",
    "delivered",
    "inherited",
];
const FILLER: &[&str] = &[
    "The weather stayed mild for most of the day.",
    "Nobody said much at supper.",
    "Time passed slowly, as it often does in such places.",
    "It had been a long season and everyone was tired.",
    "The wind moved through the trees without hurry.",
    "There was little else worth remembering about that hour.",
];

/// One book's cast and places.
#[derive(Debug, Clone)]
pub struct SynthBook {
    pub id: String,
    names: Vec<&'static str>,
    places: Vec<&'static str>,
}

/// A passage and the sentences that carry its content.
#[derive(Debug, Clone)]
pub struct Passage {
    pub text: String,
    pub events: Vec<String>,
}

/// A generator of books, passages and candidates, seeded.
pub struct Synth {
    rng: rand::rngs::StdRng,
}

impl Synth {
    pub fn new(seed: u64) -> Synth {
        Synth { rng: rand::rngs::StdRng::seed_from_u64(seed) }
    }

    pub fn book(&mut self, index: usize) -> SynthBook {
        let mut names: Vec<&str> = NAMES.to_vec();
        let mut places: Vec<&str> = PLACES.to_vec();
        use rand::seq::SliceRandom;
        names.shuffle(&mut self.rng);
        places.shuffle(&mut self.rng);
        names.truncate(5);
        places.truncate(4);
        SynthBook { id: format!("synth-book-{index}"), names, places }
    }

    fn event(&mut self, book: &SynthBook) -> String {
        let who = book.names.choose(&mut self.rng).copied().unwrap_or("Someone");
        let verb = VERBS.choose(&mut self.rng).copied().unwrap_or("found");
        let what = OBJECTS.choose(&mut self.rng).copied().unwrap_or("thing");
        let place = book.places.choose(&mut self.rng).copied().unwrap_or("house");
        match self.rng.random_range(0..3) {
            0 => format!("{who} {verb} the {what} at the {place}."),
            1 => format!("At the {place}, {who} {verb} the old {what} before dawn."),
            _ => {
                let other = book.names.choose(&mut self.rng).copied().unwrap_or("a friend");
                format!("{who} {verb} the {what} near the {place} while {other} watched.")
            }
        }
    }

    /// A leaf passage: 4–6 events among filler sentences.
    pub fn passage(&mut self, book: &SynthBook) -> Passage {
        let n = self.rng.random_range(4..=6);
        let events: Vec<String> = (0..n).map(|_| self.event(book)).collect();
        let mut sentences = Vec::new();
        for e in &events {
            sentences.push(e.clone());
            if self.rng.random_bool(0.6) {
                sentences.push(FILLER.choose(&mut self.rng).copied().unwrap_or("").to_string());
            }
        }
        Passage { text: sentences.join(" "), events }
    }

    /// A height-1 input: extractive summaries of `parts` passages joined as the composer joins
    /// children's outputs; its events are all the events the summaries kept.
    pub fn combined(&mut self, book: &SynthBook, parts: usize) -> Passage {
        let mut summaries = Vec::new();
        let mut events = Vec::new();
        for _ in 0..parts {
            let p = self.passage(book);
            let keep = self.rng.random_range(2..=3).min(p.events.len());
            let kept: Vec<String> = p.events[..keep].to_vec();
            summaries.push(kept.join(" "));
            events.extend(kept);
        }
        let refs: Vec<&str> = summaries.iter().map(String::as_str).collect();
        Passage { text: join_children(&refs), events }
    }

    /// A candidate summary of `passage`, of a random kind: extractive (1 to all events),
    /// mixed with another passage, off-topic, filler, or padded long.
    pub fn candidate(&mut self, passage: &Passage, other: &Passage) -> String {
        let pick = |rng: &mut rand::rngs::StdRng, events: &[String], k: usize| -> Vec<String> {
            let mut chosen: Vec<String> =
                events.choose_multiple(rng, k.min(events.len())).cloned().collect();
            chosen.sort_by_key(|s| events.iter().position(|e| e == s));
            chosen
        };
        let n = passage.events.len();
        match self.rng.random_range(0..6) {
            0 | 1 => {
                let k = self.rng.random_range(1..=n.max(1));
                pick(&mut self.rng, &passage.events, k).join(" ")
            }
            2 => {
                let mut s = pick(&mut self.rng, &passage.events, 1);
                s.extend(pick(&mut self.rng, &other.events, 2));
                s.join(" ")
            }
            3 => pick(&mut self.rng, &other.events, 2).join(" "),
            4 => {
                let k = self.rng.random_range(1..=2);
                let mut s = pick(&mut self.rng, &passage.events, k);
                s.push(FILLER.choose(&mut self.rng).copied().unwrap_or("").to_string());
                s.join(" ")
            }
            _ => {
                let mut s = passage.events.clone();
                for _ in 0..self.rng.random_range(4..10) {
                    s.push(FILLER.choose(&mut self.rng).copied().unwrap_or("").to_string());
                }
                s.extend(other.events.iter().cloned());
                s.join(" ")
            }
        }
    }

    pub fn rng(&mut self) -> &mut rand::rngs::StdRng {
        &mut self.rng
    }
}

/// A node of a synthetic book: its input and candidate summaries.
#[derive(Debug, Clone)]
pub struct SynthNode {
    pub book: String,
    pub height: u32,
    pub input: String,
    pub candidates: Vec<String>,
}

/// `books` books, each with `leaves` height-0 nodes and `parents` height-1 nodes, each node
/// with `k` candidates.
pub fn corpus(seed: u64, books: usize, leaves: usize, parents: usize, k: usize) -> Vec<SynthNode> {
    let mut s = Synth::new(seed);
    let mut out = Vec::new();
    for b in 0..books {
        let book = s.book(b);
        let stranger = s.book(b + 10_000);
        for i in 0..leaves + parents {
            let height = u32::from(i >= leaves);
            let p = if height == 0 { s.passage(&book) } else { s.combined(&book, 3) };
            let candidates: Vec<String> = (0..k)
                .map(|_| {
                    let other =
                        if height == 0 { s.passage(&stranger) } else { s.combined(&stranger, 2) };
                    s.candidate(&p, &other)
                })
                .collect();
            out.push(SynthNode { book: book.id.clone(), height, input: p.text, candidates });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::sim::SimLabeler;

    #[test]
    fn candidates_spread_the_labeler_scores() {
        let nodes = corpus(1, 2, 3, 1, 6);
        assert_eq!(nodes.len(), 8);
        let sim = SimLabeler::new("sim", 0.0);
        let mut spread = 0.0;
        for n in &nodes {
            let scores: Vec<f64> = n.candidates.iter().map(|c| sim.score(&n.input, c)).collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let min = scores.iter().cloned().fold(f64::MAX, f64::min);
            spread += max - min;
        }
        assert!(spread / nodes.len() as f64 > 0.2, "{spread}");
    }
}
