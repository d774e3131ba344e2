//! Split groups for train / validation / test: pairs that must never straddle a split share a
//! group. Two pairs share a group when they come from the same book, or when their inputs are
//! near-duplicates (the same passage with a different previous context, a re-decomposed leaf,
//! one prompt with different whitespace): Jaccard similarity ≥ [`NEAR_DUPLICATE`] of their word
//! 5-gram shingles. Groups are the connected components of those two relations, so a passage
//! that recurs in two books joins both books into one group.
//!
//! [`held_out`] is the one split of groups into validation and test that every trainer uses
//! (the reward models of both backbones, the policy, the learning curves): a group is held out
//! by a stable hash of its name ([`bucket`]), so a group below the policy's percentages is
//! below the reward models' too, and a policy's held-out prompts are never a reward model's
//! training inputs while the policy holds out no larger a share than the reward model (the
//! defaults: 10 + 10 % against 20 + 20 %).

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    let items: Vec<(&str, &str)> =
        pairs.iter().map(|p| (p.input.as_str(), p.group.as_str())).collect();
    let names = components(&items);
    for (p, name) in pairs.iter_mut().zip(names) {
        p.group = name;
    }
}

/// The split group of each `(input, incoming group)` item, by the rule of [`assign`]: items of
/// one book, or with near-duplicate inputs, share a group.
pub fn components(items: &[(&str, &str)]) -> Vec<String> {
    if items.is_empty() {
        return Vec::new();
    }
    // Distinct inputs are the units; books join them.
    let mut input_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for &(input, _) in items {
        let next = input_ids.len();
        input_ids.entry(input).or_insert(next);
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
    for &(input, group) in items {
        if group.starts_with("book:") {
            let i = input_ids[input];
            match first_of_book.get(group) {
                Some(&j) => uf.union(i, j),
                None => {
                    first_of_book.insert(group, i);
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
    let member_key = |input: &str, group: &str| {
        if group.starts_with("book:") {
            group.to_string()
        } else {
            format!("text:{}", super::text_hash(input))
        }
    };
    let mut names: HashMap<usize, String> = HashMap::new();
    for &(input, group) in items {
        let root = uf.find(input_ids[input]);
        let key = member_key(input, group);
        names
            .entry(root)
            .and_modify(|k| {
                if key < *k {
                    *k = key.clone()
                }
            })
            .or_insert(key);
    }
    items
        .iter()
        .map(|&(input, _)| {
            let name = &names[&uf.find(input_ids[input])];
            format!("g:{}", &blake3::hash(name.as_bytes()).to_hex()[..16])
        })
        .collect()
}

/// Where a split group falls in `[0, 100)`: the first two bytes of the blake3 hash of its name,
/// as a percentage. The same for a group in every data set, so every trainer holds it out alike.
pub fn bucket(group: &str) -> f64 {
    let h = blake3::hash(group.as_bytes());
    f64::from(u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]])) / 65536.0 * 100.0
}

/// The groups held out for validation (it chooses the epoch or step) and for test (it gives the
/// reported metrics); every other group trains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldOut {
    pub val: BTreeSet<String>,
    pub test: BTreeSet<String>,
}

impl HeldOut {
    /// Whether `group` is held out (for validation or test).
    pub fn contains(&self, group: &str) -> bool {
        self.val.contains(group) || self.test.contains(group)
    }
}

/// Splits the groups `names` (repeats allowed) by [`bucket`]: below `test_percent` to test,
/// below `test_percent + val_percent` to validation. Groups in `force_test` (`force_val`) go to
/// test (validation) whatever their bucket; forced groups count for nothing below.
///
/// Small sets: with one group, nothing else is held out; with two, the one of the lower bucket
/// is the test set when any percentage is above 0 and nothing is forced; with three or more,
/// each held-out set asked for gets at least one group (the lowest free bucket) while more than
/// one group is left to train, and if none is left, the held-out group of the highest bucket
/// (validation first) trains. So the held-out groups are always the lowest buckets.
pub fn held_out<'a>(
    names: impl IntoIterator<Item = &'a str>,
    val_percent: u32,
    test_percent: u32,
    force_val: &BTreeSet<String>,
    force_test: &BTreeSet<String>,
) -> HeldOut {
    let groups: BTreeSet<&str> = names.into_iter().collect();
    let mut out = HeldOut::default();
    let mut free: Vec<(f64, &str)> = Vec::new();
    for &g in &groups {
        if force_test.contains(g) {
            out.test.insert(g.to_string());
        } else if force_val.contains(g) {
            out.val.insert(g.to_string());
        } else {
            free.push((bucket(g), g));
        }
    }
    free.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    let forced = out.val.len() + out.test.len();
    match groups.len() {
        0 | 1 => {}
        2 => {
            if forced == 0 && (test_percent > 0 || val_percent > 0) {
                out.test.insert(free[0].1.to_string());
            }
        }
        _ => {
            let (test_below, val_below) =
                (f64::from(test_percent), f64::from(test_percent + val_percent));
            let mut left: Vec<(f64, &str)> = Vec::new();
            let (mut test_free, mut val_free) = (Vec::new(), Vec::new());
            for &(b, g) in &free {
                if b < test_below {
                    test_free.push((b, g));
                } else if b < val_below {
                    val_free.push((b, g));
                } else {
                    left.push((b, g));
                }
            }
            if test_percent > 0 && out.test.is_empty() && test_free.is_empty() && left.len() > 1 {
                test_free.push(left.remove(0));
            }
            if val_percent > 0 && out.val.is_empty() && val_free.is_empty() && left.len() > 1 {
                val_free.push(left.remove(0));
            }
            if left.is_empty() {
                // Never train on nothing: the held-out group nearest to training trains.
                let from = if val_free.is_empty() { &mut test_free } else { &mut val_free };
                if let Some(i) = (0..from.len()).max_by(|&i, &j| from[i].0.total_cmp(&from[j].0)) {
                    from.remove(i);
                }
            }
            out.test.extend(test_free.into_iter().map(|(_, g)| g.to_string()));
            out.val.extend(val_free.into_iter().map(|(_, g)| g.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(input: &str, group: &str) -> Pair {
        Pair::new(0, input, "c", "r", 1.0, group)
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

    #[test]
    fn held_out_groups_are_the_lowest_buckets_and_nest_across_percentages() {
        let none = BTreeSet::new();
        let names: Vec<String> = (0..200).map(|i| format!("g:{i}")).collect();
        let split = |v, t| held_out(names.iter().map(String::as_str), v, t, &none, &none);
        let small = split(10, 10);
        let large = split(20, 20);
        // About the share asked for, decided by each group's own bucket.
        assert!((20..=60).contains(&(small.val.len() + small.test.len())), "{small:?}");
        for g in &names {
            let b = bucket(g);
            assert_eq!(small.test.contains(g), b < 10.0, "{g}");
            assert_eq!(small.val.contains(g), (10.0..20.0).contains(&b), "{g}");
            // Held out by the smaller split → held out by the larger one.
            if small.contains(g) {
                assert!(large.contains(g), "{g}");
            }
        }
        assert!(small.val.is_disjoint(&small.test));
        // Forced groups go where they are told, whatever their bucket.
        let forced: BTreeSet<String> = ["g:7".to_string()].into();
        let f = held_out(names.iter().map(String::as_str), 10, 10, &forced, &none);
        assert!(f.val.contains("g:7") && !f.test.contains("g:7"));
        let f = held_out(names.iter().map(String::as_str), 0, 0, &none, &forced);
        assert_eq!((f.val.len(), f.test.len()), (0, 1));
        // Small sets: one group trains; of two, the lower bucket is the test set; of three,
        // each part gets one.
        assert_eq!(held_out(["a"], 50, 50, &none, &none), HeldOut::default());
        let two = held_out(["a", "b"], 10, 10, &none, &none);
        let lower = if bucket("a") < bucket("b") { "a" } else { "b" };
        assert_eq!(two.test, [lower.to_string()].into());
        assert!(two.val.is_empty());
        let three = held_out(["a", "b", "c"], 10, 10, &none, &none);
        assert_eq!((three.val.len(), three.test.len()), (1, 1));
        let all = held_out(["a", "b", "c"], 50, 50, &none, &none);
        assert_eq!(all.val.len() + all.test.len(), 2, "one group always trains: {all:?}");
    }
}
