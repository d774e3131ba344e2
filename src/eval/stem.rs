//! The Porter stemmer (Porter 1980) with the extensions of NLTK's default mode, which is what
//! the `rouge-score` package stems with. Written here from the published algorithm and the
//! documented behaviour of that mode:
//!
//! - a short list of irregular forms (`skies` → `sky`, `dying` → `die`, `news` → `news`, …);
//! - words of one or two letters are left alone;
//! - step 1a: a four-letter word in `ies` becomes `ie` (`dies` → `die`);
//! - step 1b: `ied` → `ie` for four-letter words, else `i`, before the `eed`/`ed`/`ing` rules;
//! - step 1c: `y` → `i` only after a consonant that is not the whole stem (`happy` → `happi`,
//!   `enjoy` stays, `by` stays);
//! - *o also holds for a two-letter vowel-consonant stem;
//! - step 2: `alli` → `al` first (and step 2 again), `bli` → `ble`, and `fulli` → `ful`,
//!   `logi` → `log` (measured with the `l`);
//! - the rule lists stop at the first suffix that matches, whether or not its condition holds.
//!
//! Works on ASCII lowercase words (ROUGE's tokens); other bytes count as consonants.

/// Stems one lowercase ASCII word.
pub fn stem(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    if let Some(s) = irregular(&lower) {
        return s.to_string();
    }
    if lower.len() <= 2 {
        return lower;
    }
    let mut w = lower.into_bytes();
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5a(&mut w);
    step5b(&mut w);
    // Only ASCII bytes were removed or appended to a valid string's bytes.
    String::from_utf8(w).unwrap_or_default()
}

fn irregular(word: &str) -> Option<&'static str> {
    Some(match word {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

fn is_vowel(b: u8) -> bool {
    matches!(b, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags of every letter: `y` is a consonant at the start or after a vowel.
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &b) in w.iter().enumerate() {
        let c = if is_vowel(b) {
            false
        } else if b == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(c);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// m in [C](VC){m}[V]: the number of vowel→consonant transitions.
fn measure(w: &[u8]) -> usize {
    let flags = consonants(w);
    flags.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[u8]) -> bool {
    consonants(w).iter().any(|&c| !c)
}

/// *d: ends with a double consonant.
fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// *o: ends consonant-vowel-consonant, the last not w, x or y (or, NLTK, a two-letter
/// vowel-consonant word).
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    if n >= 3 {
        let f = consonants(w);
        if f[n - 3] && !f[n - 2] && f[n - 1] && !matches!(w[n - 1], b'w' | b'x' | b'y') {
            return true;
        }
    }
    if n == 2 {
        let f = consonants(w);
        return !f[0] && f[1];
    }
    false
}

fn ends(w: &[u8], suffix: &str) -> bool {
    w.ends_with(suffix.as_bytes())
}

fn replace(w: &mut Vec<u8>, suffix_len: usize, with: &str) {
    w.truncate(w.len() - suffix_len);
    w.extend_from_slice(with.as_bytes());
}

/// A rule's condition on the stem (the word without the suffix).
type Cond = fn(&[u8]) -> bool;

fn m_gt0(s: &[u8]) -> bool {
    measure(s) > 0
}

fn m_gt1(s: &[u8]) -> bool {
    measure(s) > 1
}

/// Applies the first rule whose suffix matches, if its condition holds; either way stops there.
fn apply_rules(w: &mut Vec<u8>, rules: &[(&str, &str, Cond)]) {
    for &(suffix, with, cond) in rules {
        if ends(w, suffix) {
            let stem_len = w.len() - suffix.len();
            if cond(&w[..stem_len]) {
                replace(w, suffix.len(), with);
            }
            return;
        }
    }
}

fn step1a(w: &mut Vec<u8>) {
    if ends(w, "ies") && w.len() == 4 {
        replace(w, 3, "ie");
        return;
    }
    if ends(w, "sses") {
        replace(w, 4, "ss");
    } else if ends(w, "ies") {
        replace(w, 3, "i");
    } else if ends(w, "ss") {
    } else if ends(w, "s") {
        replace(w, 1, "");
    }
}

fn step1b(w: &mut Vec<u8>) {
    if ends(w, "ied") {
        let with = if w.len() == 4 { "ie" } else { "i" };
        replace(w, 3, with);
        return;
    }
    if ends(w, "eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            replace(w, 3, "ee");
        }
        return;
    }
    let mut removed = false;
    for suffix in ["ed", "ing"] {
        if ends(w, suffix) && contains_vowel(&w[..w.len() - suffix.len()]) {
            w.truncate(w.len() - suffix.len());
            removed = true;
            break;
        }
    }
    if !removed {
        return;
    }
    if ends(w, "at") || ends(w, "bl") || ends(w, "iz") {
        w.push(b'e');
    } else if ends_double_consonant(w) {
        if !matches!(w[w.len() - 1], b'l' | b's' | b'z') {
            w.pop();
        }
    } else if measure(w) == 1 && ends_cvc(w) {
        w.push(b'e');
    }
}

fn step1c(w: &mut [u8]) {
    let n = w.len();
    if n >= 1 && w[n - 1] == b'y' {
        let stem = &w[..n - 1];
        if stem.len() > 1 && is_consonant(stem, stem.len() - 1) {
            w[n - 1] = b'i';
        }
    }
}

fn step2(w: &mut Vec<u8>) {
    if ends(w, "alli") && measure(&w[..w.len() - 4]) > 0 {
        replace(w, 4, "al");
        step2(w);
        return;
    }
    const RULES: &[(&str, &str, Cond)] = &[
        ("ational", "ate", m_gt0),
        ("tional", "tion", m_gt0),
        ("enci", "ence", m_gt0),
        ("anci", "ance", m_gt0),
        ("izer", "ize", m_gt0),
        ("bli", "ble", m_gt0),
        ("alli", "al", m_gt0),
        ("entli", "ent", m_gt0),
        ("eli", "e", m_gt0),
        ("ousli", "ous", m_gt0),
        ("ization", "ize", m_gt0),
        ("ation", "ate", m_gt0),
        ("ator", "ate", m_gt0),
        ("alism", "al", m_gt0),
        ("iveness", "ive", m_gt0),
        ("fulness", "ful", m_gt0),
        ("ousness", "ous", m_gt0),
        ("aliti", "al", m_gt0),
        ("iviti", "ive", m_gt0),
        ("biliti", "ble", m_gt0),
        ("fulli", "ful", m_gt0),
        // Measured with the `l` kept on the stem (so `geologi` → `geolog`).
        ("logi", "log", logi_cond),
    ];
    apply_rules(w, RULES);
}

fn logi_cond(stem: &[u8]) -> bool {
    let mut with_l = stem.to_vec();
    with_l.push(b'l');
    measure(&with_l) > 0
}

fn step3(w: &mut Vec<u8>) {
    const RULES: &[(&str, &str, Cond)] = &[
        ("icate", "ic", m_gt0),
        ("ative", "", m_gt0),
        ("alize", "al", m_gt0),
        ("iciti", "ic", m_gt0),
        ("ical", "ic", m_gt0),
        ("ful", "", m_gt0),
        ("ness", "", m_gt0),
    ];
    apply_rules(w, RULES);
}

fn ion_cond(stem: &[u8]) -> bool {
    measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't'))
}

fn step4(w: &mut Vec<u8>) {
    const RULES: &[(&str, &str, Cond)] = &[
        ("al", "", m_gt1),
        ("ance", "", m_gt1),
        ("ence", "", m_gt1),
        ("er", "", m_gt1),
        ("ic", "", m_gt1),
        ("able", "", m_gt1),
        ("ible", "", m_gt1),
        ("ant", "", m_gt1),
        ("ement", "", m_gt1),
        ("ment", "", m_gt1),
        ("ent", "", m_gt1),
        ("ion", "", ion_cond),
        ("ou", "", m_gt1),
        ("ism", "", m_gt1),
        ("ate", "", m_gt1),
        ("iti", "", m_gt1),
        ("ous", "", m_gt1),
        ("ive", "", m_gt1),
        ("ize", "", m_gt1),
    ];
    apply_rules(w, RULES);
}

fn step5a(w: &mut Vec<u8>) {
    if ends(w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

fn step5b(w: &mut Vec<u8>) {
    if ends(w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        w.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::stem;

    /// Word → stem as NLTK's PorterStemmer (default mode, nltk 3.10.4) gives them: computed
    /// with that package, kept here as facts.
    const CASES: &[(&str, &str)] = include!("testdata/porter_cases.rs.in");

    #[test]
    fn matches_nltk_default_mode() {
        let mut wrong = Vec::new();
        for &(word, want) in CASES {
            let got = stem(word);
            if got != want {
                wrong.push(format!("{word}: got {got}, want {want}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} differ:\n{}",
            wrong.len(),
            CASES.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn paper_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("controlling", "control"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
