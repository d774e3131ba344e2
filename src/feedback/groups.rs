//! Split groups for train / validation / test: pairs that must never straddle a split share a
//! group. Two pairs share a group when they come from the same book, or when their inputs are
//! near-duplicates (the same passage with a different previous context, a re-decomposed leaf,
//! one prompt with different whitespace): Jaccard similarity ≥ [`NEAR_DUPLICATE`] of their word
//! 5-gram shingles. Groups are the connected components of those two relations, so a passage
//! that recurs in two books joins both books into one group.

use std::collections::{BTreeMap, HashMap};

use super::Pair;

/// Shingle Jaccard similarity at or above which two inputs are the same passage.
pub const NEAR_DUPLICATE: f64 = 0.5;
/// Words per shingle.
const SHINGLE: usize = 5;
/// Shingles shared by more inputs than this are boilerplate (a template sentence), not
/// evidence of duplication.
const MAX_POSTINGS: usize = 64;

/// The group-forming key a pair arrives with: `book:<id>` when its book is known.
pub fn book_group(book: &str) -> String {
    format!("book:{book}")
}

/// Hashed word shingles of a text (lowercased, punctuation dropped); short texts are one
/// shingle of all their words.
fn shingles(text: &str) -> Vec<u64> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect())
        .filter(|w: &String| !w.is_empty())
        .collect();
    let hash = |ws: &[String]| {
        let mut h = blake3::Hasher::new();
        for w in ws {
            h.update(w.as_bytes());
            h.update(b" ");
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    };
    let mut out: Vec<u64> = if words.len() <= SHINGLE {
        vec![hash(&words)]
    } else {
        words.windows(SHINGLE).map(hash).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Rewrites every pair's `group` to its component: pairs whose incoming group is the same book
/// key, or whose inputs are near-duplicates, end up in one group. A pair's incoming group that
/// is not a book key (`book:…`) is ignored. Group names are stable: `g:` and a hash of the
/// component's smallest member key.
pub fn assign(pairs: &mut [Pair]) {
    if pairs.is_empty() {
        return;
    }
    // Distinct inputs are the units; books join them.
    let mut input_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pairs.iter() {
        let next = input_ids.len();
        input_ids.entry(p.input.as_str()).or_insert(next);
    }
    let inputs: Vec<&str> = {
        let mut v = vec![""; input_ids.len()];
        for (text, &i) in &input_ids {
            v[i] = text;
        }
        v
    };
    let n = inputs.len();
    let mut uf = UnionFind((0..n).collect());
    // Same book → same group.
    let mut first_of_book: HashMap<&str, usize> = HashMap::new();
    for p in pairs.iter() {
        if p.group.starts_with("book:") {
            let i = input_ids[p.input.as_str()];
            match first_of_book.get(p.group.as_str()) {
                Some(&j) => uf.union(i, j),
                None => {
                    first_of_book.insert(p.group.as_str(), i);
                }
            }
        }
    }
    // Near-duplicate inputs → same group.
    let sh: Vec<Vec<u64>> = inputs.iter().map(|t| shingles(t)).collect();
    let mut postings: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, s) in sh.iter().enumerate() {
        for &h in s {
            postings.entry(h).or_default().push(i);
        }
    }
    let mut shared: HashMap<(usize, usize), usize> = HashMap::new();
    for list in postings.values().filter(|l| l.len() > 1 && l.len() <= MAX_POSTINGS) {
        for a in 0..list.len() {
            for b in a + 1..list.len() {
                *shared.entry((list[a], list[b])).or_default() += 1;
            }
        }
    }
    for ((a, b), common) in shared {
        let union = sh[a].len() + sh[b].len() - common;
        if union > 0 && common as f64 / union as f64 >= NEAR_DUPLICATE {
            uf.union(a, b);
        }
    }
    // Name each component by its smallest member key (a book key, else the input's hash).
    let member_key = |p: &Pair| {
        if p.group.starts_with("book:") {
            p.group.clone()
        } else {
            format!("text:{}", super::text_hash(&p.input))
        }
    };
    let mut names: HashMap<usize, String> = HashMap::new();
    for p in pairs.iter() {
        let root = uf.find(input_ids[p.input.as_str()]);
        let key = member_key(p);
        names
            .entry(root)
            .and_modify(|k| {
                if key < *k {
                    *k = key.clone()
                }
            })
            .or_insert(key);
    }
    let roots: Vec<usize> = pairs.iter().map(|p| uf.find(input_ids[p.input.as_str()])).collect();
    for (p, root) in pairs.iter_mut().zip(roots) {
        let name = &names[&root];
        p.group = format!("g:{}", &blake3::hash(name.as_bytes()).to_hex()[..16]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(input: &str, group: &str) -> Pair {
        Pair {
            height: 0,
            input: input.into(),
            chosen: "c".into(),
            rejected: "r".into(),
            target: 1.0,
            group: group.into(),
        }
    }

    const PASSAGE: &str = "Alice was beginning to get very tired of sitting by her sister on the \
        bank, and of having nothing to do: once or twice she had peeped into the book her sister \
        was reading, but it had no pictures or conversations in it.";

    #[test]
    fn near_duplicates_and_books_share_a_group() {
        let original = vec![
            pair(PASSAGE, "key-1"),
            // The same passage after a previous-context line: a different input key.
            pair(&format!("Summary so far: the rabbit ran.\n\n{PASSAGE}"), "key-2"),
            // The same passage re-wrapped with other whitespace and case.
            pair(&PASSAGE.to_uppercase().replace(' ', "  "), "key-3"),
            pair("A wholly different passage about a whale and a ship at sea, far away.", "key-4"),
            pair("Another text of the first book.", "book:b1"),
            pair("Yet another of the first book, unrelated words entirely here.", "book:b1"),
        ];
        let mut pairs = original.clone();
        assign(&mut pairs);
        assert_eq!(pairs[0].group, pairs[1].group);
        assert_eq!(pairs[0].group, pairs[2].group);
        assert_ne!(pairs[0].group, pairs[3].group);
        assert_eq!(pairs[4].group, pairs[5].group);
        assert_ne!(pairs[3].group, pairs[4].group);
        // Deterministic names.
        let mut again = original.clone();
        assign(&mut again);
        assert_eq!(
            again.iter().map(|p| &p.group).collect::<Vec<_>>(),
            pairs.iter().map(|p| &p.group).collect::<Vec<_>>()
        );
    }
}
