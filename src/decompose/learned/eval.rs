//! Segmentation metrics: Pk (Beeferman et al. 1999) and WindowDiff (Pevzner & Hearst 2002).
//!
//! A segmentation of `n` units is given by its boundaries: the indices `i` in `1..n` of the
//! units that start a new segment. Both metrics slide a window of `k` units over the text and
//! count disagreements between the reference and the hypothesis, as a fraction of the
//! `n − k` windows: Pk asks whether the window's two ends lie in the same segment, WindowDiff
//! whether the window holds the same number of boundaries. 0 is perfect; lower is better.
//! `k` is by convention half the mean reference segment length ([`default_k`]).

/// Boundaries as a per-gap indicator: `out[g]` is 1 when unit `g + 1` starts a segment.
fn indicator(n: usize, boundaries: &[usize]) -> Vec<u32> {
    let mut out = vec![0u32; n.saturating_sub(1)];
    for &b in boundaries {
        if b >= 1 && b < n {
            out[b - 1] = 1;
        }
    }
    out
}

fn prefix(ind: &[u32]) -> Vec<u32> {
    let mut p = Vec::with_capacity(ind.len() + 1);
    p.push(0);
    for &x in ind {
        p.push(p[p.len() - 1] + x);
    }
    p
}

/// Half the mean segment length of the reference, rounded, at least 1.
pub fn default_k(n: usize, reference: &[usize]) -> usize {
    let segments = indicator(n, reference).iter().sum::<u32>() as usize + 1;
    ((n as f64 / segments as f64 / 2.0).round() as usize).max(1)
}

/// Counts per window: (boundaries in the reference, in the hypothesis) for windows
/// `[i, i + k]` (the gaps `i .. i + k`), `i` in `0..n − k`.
fn windows(n: usize, reference: &[usize], hypothesis: &[usize], k: usize) -> Vec<(u32, u32)> {
    let (r, h) = (prefix(&indicator(n, reference)), prefix(&indicator(n, hypothesis)));
    if n <= k {
        return Vec::new();
    }
    (0..n - k).map(|i| (r[i + k] - r[i], h[i + k] - h[i])).collect()
}

/// Pk: the share of windows whose ends are in the same segment in one segmentation and not in
/// the other. 0 when there are no windows (`n ≤ k`).
/// `None` when there is no window (fewer than `k + 1` units): undefined, not perfect.
pub fn pk(n: usize, reference: &[usize], hypothesis: &[usize], k: usize) -> Option<f64> {
    let w = windows(n, reference, hypothesis, k.max(1));
    if w.is_empty() {
        return None;
    }
    Some(w.iter().filter(|&&(r, h)| (r == 0) != (h == 0)).count() as f64 / w.len() as f64)
}

/// WindowDiff: the share of windows holding different numbers of boundaries; `None` when there
/// is no window.
pub fn window_diff(n: usize, reference: &[usize], hypothesis: &[usize], k: usize) -> Option<f64> {
    let w = windows(n, reference, hypothesis, k.max(1));
    if w.is_empty() {
        return None;
    }
    Some(w.iter().filter(|&&(r, h)| r != h).count() as f64 / w.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_empty() {
        assert_eq!(pk(20, &[5, 10, 15], &[5, 10, 15], 3), Some(0.0));
        assert_eq!(window_diff(20, &[5, 10, 15], &[5, 10, 15], 3), Some(0.0));
        // Fewer units than a window: undefined, not perfect.
        assert_eq!(pk(3, &[1], &[2], 5), None);
        assert_eq!(window_diff(3, &[1], &[2], 5), None);
        assert_eq!(default_k(20, &[5, 10, 15]), 3); // 4 segments of 5: 2.5 rounds to 3
        assert_eq!(default_k(10, &[]), 5);
    }

    #[test]
    fn hand_computed_cases() {
        // 10 units, reference boundary before unit 5, k = 2: windows (i, i+2) for i in 0..8
        // straddle gap 4 (the boundary) when i = 3 or 4.
        let reference = [5];
        // No hypothesis boundary: the 2 straddling windows disagree.
        assert_eq!(pk(10, &reference, &[], 2), Some(2.0 / 8.0));
        assert_eq!(window_diff(10, &reference, &[], 2), Some(2.0 / 8.0));
        // Off by one (boundary before unit 6): windows i = 3 (ref only) and i = 5 (hyp only).
        assert_eq!(pk(10, &reference, &[6], 2), Some(2.0 / 8.0));
        // Two hypothesis boundaries in one window: Pk sees agreement, WindowDiff does not.
        // Window i = 4 holds gaps 4 and 5 (ref 1, hyp 2); i = 5 holds only the extra one.
        assert_eq!(pk(10, &reference, &[5, 6], 2), Some(1.0 / 8.0));
        assert_eq!(window_diff(10, &reference, &[5, 6], 2), Some(2.0 / 8.0));
        // Boundaries everywhere: every window without a reference boundary disagrees.
        let all: Vec<usize> = (1..10).collect();
        assert_eq!(pk(10, &reference, &all, 2), Some(6.0 / 8.0));
        assert_eq!(window_diff(10, &reference, &all, 2), Some(1.0));
    }
}
