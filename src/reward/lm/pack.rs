//! Tokens in, scores out: a node's prompt and summaries as token sequences (`encode`, the input
//! cut at its end when the longest does not fit), sequences that share the prompt packed into
//! one row (`pack`: the common prefix once), rows batched by length through the backbone
//! (`last_hidden_rows`) and the scalar head on their last tokens (`score_rows`, `head_scores`,
//! one head row per height with `head_of`).

use candle_core::{DType, Tensor};

use crate::compose::prompt;
use crate::infer::tokenizer::GgufTokenizer;
use crate::lm::{LmError, Packed, TrainableLlama};
use crate::reward::RewardError;

/// A pair's chosen and rejected token sequences.
pub(super) type TokenPair = (Vec<u32>, Vec<u32>);

/// The end-of-turn token appended to every summary (as the policy appends it).
pub(super) fn end_token(tokenizer: &GgufTokenizer) -> Result<u32, RewardError> {
    let ids = tokenizer.encode(&tokenizer.eos_token).map_err(LmError::from)?;
    match ids.as_slice() {
        [one] => Ok(*one),
        _ => tokenizer.eos_ids.last().copied().ok_or_else(|| {
            RewardError::Invalid("the model's tokenizer has no end-of-sequence token".into())
        }),
    }
}

/// Tokens of (the composer's prompt for `input` at `height`) + each summary + end of turn, at
/// most `max_tokens` each; and whether anything was cut. When the longest does not fit, the
/// input loses its end, by the same cut for every summary (they are judged on the same text,
/// and the prompt's instruction and the input's beginning, where news and stories put the most,
/// stay); a summary too long even beside an empty input is cut from the left.
pub(super) fn encode(
    tokenizer: &GgufTokenizer,
    end: u32,
    max_tokens: usize,
    height: u32,
    input: &str,
    summaries: &[&str],
) -> Result<(Vec<Vec<u32>>, bool), RewardError> {
    let head_of = |text: &str| -> Result<Vec<u32>, RewardError> {
        let messages = prompt::render(prompt::template_for(height), text, None)
            .map_err(|e| RewardError::Invalid(format!("prompt: {e}")))?;
        let chat = tokenizer.render_chat(&messages).map_err(LmError::from)?;
        Ok(tokenizer.encode(&chat).map_err(LmError::from)?)
    };
    let tails = summaries
        .iter()
        .map(|s| {
            let mut t = tokenizer.encode(s.trim()).map_err(LmError::from)?;
            t.push(end);
            Ok(t)
        })
        .collect::<Result<Vec<Vec<u32>>, RewardError>>()?;
    let longest = tails.iter().map(Vec::len).max().unwrap_or(0);
    let mut head = head_of(input)?;
    let cut = head.len() + longest > max_tokens;
    if cut {
        let input_ids = tokenizer.encode(input.trim()).map_err(LmError::from)?;
        let mut keep = input_ids.len().saturating_sub(head.len() + longest - max_tokens);
        // A cut text can tokenize a little differently once rendered: shrink until it fits.
        loop {
            let text = tokenizer.decode(&input_ids[..keep]).map_err(LmError::from)?;
            head = head_of(&text)?;
            let over = (head.len() + longest).saturating_sub(max_tokens);
            if over == 0 || keep == 0 {
                break;
            }
            keep = keep.saturating_sub(over);
        }
    }
    let seqs = tails
        .into_iter()
        .map(|t| {
            let mut ids = head.clone();
            ids.extend(t);
            if ids.len() > max_tokens {
                ids.drain(..ids.len() - max_tokens);
            }
            ids
        })
        .collect();
    Ok((seqs, cut))
}

/// Sequences scored together (a pair, a node's candidates) as packed rows: their common
/// prefix (the node's prompt and input, as far as they are the same) once, then each
/// one's rest; sequences with no common prefix, one row each. Completions keep `seqs`' order.
pub(super) fn pack(seqs: &[&[u32]]) -> Vec<Packed> {
    let shortest = seqs.iter().map(|s| s.len()).min().unwrap_or(0);
    let common = seqs.iter().skip(1).fold(shortest.saturating_sub(1), |n, s| {
        n.min(seqs[0].iter().zip(s.iter()).take_while(|(a, b)| a == b).count())
    });
    if seqs.len() > 1 && common >= 1 {
        return vec![Packed {
            prompt: seqs[0][..common].to_vec(),
            completions: seqs.iter().map(|s| s[common..].to_vec()).collect(),
        }];
    }
    seqs.iter()
        .map(|s| {
            let cut = s.len().saturating_sub(1);
            Packed { prompt: s[..cut].to_vec(), completions: vec![s[cut..].to_vec()] }
        })
        .collect()
}

/// The final hidden state (f32) of every completion's last token of `rows` under the loaded
/// backbone, `(completions, hidden)` in the rows' completion order; several rows per forward
/// pass (similar lengths together, at most `budget` tokens with padding).
pub(super) fn last_hidden_rows(
    llama: &TrainableLlama,
    rows: &[Packed],
    budget: usize,
) -> Result<Tensor, RewardError> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by_key(|&i| packed_len(&rows[i]));
    let mut first = Vec::with_capacity(rows.len());
    let mut n = 0;
    for r in rows {
        first.push(n);
        n += r.completions.len();
    }
    // Where each batch row lands among the completions, to put them back in order.
    let mut place = Vec::with_capacity(n);
    let mut parts = Vec::new();
    let mut at = 0;
    while at < idx.len() {
        let mut end = at + 1;
        while end < idx.len() && (end + 1 - at) * packed_len(&rows[idx[end]]) <= budget {
            end += 1;
        }
        let batch: Vec<Packed> = idx[at..end].iter().map(|&i| rows[i].clone()).collect();
        parts.push(llama.packed_last_hidden(&batch)?.to_dtype(DType::F32)?);
        for &i in &idx[at..end] {
            place.extend((0..rows[i].completions.len()).map(|c| first[i] + c));
        }
        at = end;
    }
    let hidden = llama.config.hidden;
    if parts.is_empty() {
        return Ok(Tensor::zeros((0, hidden), DType::F32, llama.device())?);
    }
    let stacked = Tensor::cat(&parts, 0)?;
    let mut back = vec![0u32; n];
    for (k, &p) in place.iter().enumerate() {
        back[p] = k as u32;
    }
    let back = Tensor::new(back, stacked.device())?;
    Ok(stacked.index_select(&back, 0)?)
}

/// Rewards of every completion of `rows` under the loaded backbone and a head (`heads[i]`: the
/// head row of `rows[i]`'s completions), batched as [`last_hidden_rows`]; in the rows'
/// completion order.
pub(super) fn score_rows(
    llama: &TrainableLlama,
    rows: &[Packed],
    heads: &[u32],
    w: &Tensor,
    b: &Tensor,
    budget: usize,
) -> Result<Vec<f32>, RewardError> {
    let hidden = last_hidden_rows(llama, rows, budget)?;
    if hidden.dim(0)? == 0 {
        return Ok(Vec::new());
    }
    let which = head_rows(rows.iter().zip(heads).map(|(r, &h)| (h, r.completions.len())));
    let which = Tensor::new(which, w.device())?;
    Ok(head_scores(&hidden, w, b, &which)?.to_vec1::<f32>()?)
}

/// Tokens per forward pass when scoring.
pub(super) fn score_budget(max_tokens: usize) -> usize {
    4 * max_tokens.max(256)
}

/// Margins (chosen − rejected) of the encoded pairs `idx` under the backbone as it is and a
/// head (validation during training).
#[allow(clippy::too_many_arguments)]
pub(super) fn pair_margins(
    llama: &TrainableLlama,
    data: &[TokenPair],
    heights: &[u32],
    idx: &[usize],
    w: &Tensor,
    b: &Tensor,
    max_tokens: usize,
) -> Result<Vec<f32>, RewardError> {
    let groups: Vec<Vec<Vec<u32>>> =
        idx.iter().map(|&i| vec![data[i].0.clone(), data[i].1.clone()]).collect();
    let heads = w.dim(0)?;
    let group_heads: Vec<u32> = idx.iter().map(|&i| head_of(heights[i], heads)).collect();
    let (rows, row_heads, first) = rows_of(&groups, &group_heads);
    let s = score_rows(llama, &rows, &row_heads, w, b, score_budget(max_tokens))?;
    Ok(first.iter().map(|&f| s[f] - s[f + 1]).collect())
}

/// The packed rows of groups of sequences that share a prompt, each row's head (its group's,
/// from `heads`), and where each group's first score lands among the rows' completions.
pub(super) fn rows_of(
    groups: &[Vec<Vec<u32>>],
    heads: &[u32],
) -> (Vec<Packed>, Vec<u32>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut row_heads = Vec::new();
    let mut first = Vec::with_capacity(groups.len());
    let mut n = 0;
    for (g, &h) in groups.iter().zip(heads) {
        first.push(n);
        n += g.len();
        if !g.is_empty() {
            let packed = pack(&g.iter().map(Vec::as_slice).collect::<Vec<_>>());
            row_heads.extend(std::iter::repeat_n(h, packed.len()));
            rows.extend(packed);
        }
    }
    (rows, row_heads, first)
}

/// The head row a node at `height` is scored with, among `heads` rows: its height's, or the
/// highest trained one's above it (one shared row: 0).
pub(super) fn head_of(height: u32, heads: usize) -> u32 {
    height.min(heads.saturating_sub(1) as u32)
}

/// Per completion, its head row: `(head, completions)` per packed row, in order.
pub(super) fn head_rows(rows: impl Iterator<Item = (u32, usize)>) -> Vec<u32> {
    rows.flat_map(|(h, n)| std::iter::repeat_n(h, n)).collect()
}

/// Tokens of a packed row.
pub(super) fn packed_len(p: &Packed) -> usize {
    p.prompt.len() + p.completions.iter().map(Vec::len).sum::<usize>()
}

/// The scalar head over last-token hidden states `(B, hidden)`: `(B,)`, completion `i` scored
/// by head row `which[i]` of `w` `(heads, hidden)` and `b` `(heads,)`.
pub(super) fn head_scores(
    h: &Tensor,
    w: &Tensor,
    b: &Tensor,
    which: &Tensor,
) -> candle_core::Result<Tensor> {
    let w = w.index_select(which, 0)?;
    let b = b.index_select(which, 0)?;
    (h.to_dtype(DType::F32)? * w)?.sum(1)? + b
}
