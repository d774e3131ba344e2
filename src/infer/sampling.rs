//! Choosing the next token from a row of logits: greedy, temperature, top-k, top-p, repetition
//! penalty and no-repeat-n-gram blocking, with one seeded RNG per sequence.
//!
//! A [`Sampler`] belongs to one sequence, so the tokens it picks depend only on its own request,
//! seed and logits, never on what else shares the batch. The log-probability it reports is that
//! of the chosen token under the *unmodified* model distribution (before penalties, temperature
//! and truncation), which is what scoring candidates needs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SamplingParams;

/// The next-token chooser of one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    work: Vec<f32>,
    order: Vec<u32>,
}

/// Log-softmax of `logits` at `index`.
pub fn logprob_of(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits[index] - max - sum.ln()
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in xs.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: StdRng::seed_from_u64(seed), work: Vec::new(), order: Vec::new() }
    }

    /// Picks the next token. `prompt` and `generated` are the sequence so far (for the
    /// repetition penalty, which looks at both, and n-gram blocking, which looks at the output).
    /// Returns the token and its log-probability under the raw logits.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> (u32, f32) {
        let p = &self.params;
        let work = &mut self.work;
        work.clear();
        work.extend_from_slice(logits);
        let vocab = work.len();

        if p.repetition_penalty != 1.0 && p.repetition_window > 0 && p.repetition_penalty > 0.0 {
            let total = prompt.len() + generated.len();
            let skip = total.saturating_sub(p.repetition_window);
            let mut seen: Vec<u32> =
                prompt.iter().chain(generated.iter()).skip(skip).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = work.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if let Some(n) = p.no_repeat_ngram.filter(|&n| n > 0) {
            if generated.len() + 1 >= n {
                let prefix = &generated[generated.len() + 1 - n..];
                for i in 0..(generated.len() + 1 - n) {
                    if &generated[i..i + n - 1] == prefix {
                        if let Some(l) = work.get_mut(generated[i + n - 1] as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        // Everything banned: fall back to the raw distribution rather than emit garbage.
        if work.iter().all(|l| *l == f32::NEG_INFINITY) {
            work.copy_from_slice(logits);
        }

        let token = if p.temperature <= 0.0 {
            argmax(work)
        } else {
            let t = p.temperature;
            let max = work.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let order = &mut self.order;
            order.clear();
            order.extend((0..vocab as u32).filter(|&i| work[i as usize] > f32::NEG_INFINITY));
            let by_logit = |a: &u32, b: &u32| work[*b as usize].total_cmp(&work[*a as usize]);
            if let Some(k) = p.top_k.filter(|&k| k > 0 && k < order.len()) {
                order.select_nth_unstable_by(k - 1, by_logit);
                order.truncate(k);
            }
            order.sort_unstable_by(|a, b| by_logit(a, b).then(a.cmp(b)));
            let mut probs: Vec<f32> =
                order.iter().map(|&i| ((work[i as usize] - max) / t).exp()).collect();
            let sum: f32 = probs.iter().sum();
            for q in probs.iter_mut() {
                *q /= sum;
            }
            let mut keep = probs.len();
            if p.top_p > 0.0 && p.top_p < 1.0 {
                let mut acc = 0.0;
                for (i, q) in probs.iter().enumerate() {
                    acc += q;
                    if acc >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
            }
            let total: f32 = probs[..keep].iter().sum();
            let mut r = self.rng.random::<f32>() * total;
            let mut chosen = order[keep - 1] as usize;
            for (i, q) in probs[..keep].iter().enumerate() {
                if r < *q {
                    chosen = order[i] as usize;
                    break;
                }
                r -= q;
            }
            chosen
        };
        (token as u32, logprob_of(logits, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::greedy()
    }

    #[test]
    fn greedy_is_argmax_and_logprob_is_raw() {
        let mut s = Sampler::new(params(), 0);
        let logits = [0.0, 2.0, 1.0];
        let (t, lp) = s.sample(&logits, &[], &[]);
        assert_eq!(t, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp - expected).abs() < 1e-6);
    }

    #[test]
    fn repetition_penalty_moves_greedy_choice() {
        let mut p = params();
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(p, 0);
        let (t, _) = s.sample(&[0.0, 2.0, 1.5], &[1], &[]);
        assert_eq!(t, 2);
    }

    #[test]
    fn no_repeat_ngram_blocks_a_repeat() {
        let mut p = params();
        p.no_repeat_ngram = Some(2);
        let mut s = Sampler::new(p, 0);
        // Output "1 2 1": the bigram (1, 2) exists, so 2 is banned after 1.
        let (t, _) = s.sample(&[0.0, 1.0, 3.0], &[], &[1, 2, 1]);
        assert_eq!(t, 1);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let mut p = params();
        p.temperature = 1.0;
        p.top_k = Some(2);
        let logits = [3.0, 2.9, -1.0, 2.8];
        let draw = |seed| {
            let mut s = Sampler::new(p.clone(), seed);
            (0..50).map(|_| s.sample(&logits, &[], &[]).0).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(a.iter().all(|&t| t == 0 || t == 1));
        assert!(a.contains(&0) && a.contains(&1));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut p = params();
        p.temperature = 1.0;
        p.top_p = 0.5;
        let mut s = Sampler::new(p, 3);
        for _ in 0..20 {
            assert_eq!(s.sample(&[10.0, 0.0, 0.0], &[], &[]).0, 0);
        }
    }
}
