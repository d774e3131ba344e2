//! Training the boundary model: feature rows and labels from books' own chapter structure (in
//! several views, see [`Views`]) and from people's split corrections.

use serde::{Deserialize, Serialize};

use super::model::{self, BoundaryModel, ModelMeta, TrainConfig, TrainSummary, TrainingData};
use super::{
    strip_headings, Featurizer, Hide, LearnedConfig, LearnedError, SplitFeedback, Units,
    FEEDBACK_WEIGHT,
};
use crate::book::Book;

/// A book with its labels for training.
#[derive(Debug, Clone)]
pub struct TrainingBook {
    pub name: String,
    pub book: Book,
    /// Split corrections given on this book.
    pub feedback: Vec<SplitFeedback>,
}

/// Which views of each book become training rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Views {
    /// The book with headings hidden ([`Hide::Headings`]), its chapter starts as positives.
    pub hidden: bool,
    /// The book with headings and the blank lines around them hidden ([`Hide::Layout`]), its
    /// chapter starts as positives: teaches the cues of the prose alone.
    pub prose: bool,
    /// The book as it is, gaps before a heading as positives (teaches the heading feature).
    pub visible: bool,
}

impl Default for Views {
    fn default() -> Self {
        Views { hidden: true, prose: true, visible: true }
    }
}

/// Feature rows and labels of `books` (see [`Views`]) and their split corrections.
pub fn training_data(
    featurizer: &Featurizer,
    books: &[TrainingBook],
    views: Views,
    max_tokens: usize,
    progress: &dyn Fn(&str),
) -> Result<(TrainingData, usize), LearnedError> {
    let dim = featurizer.features.dim(featurizer.encoder.dim());
    let mut data = TrainingData::new(dim);
    let mut feedback_rows = 0;
    for tb in books {
        progress(&format!("features of {}", tb.name));
        let hidden = [(views.hidden, Hide::Headings), (views.prose, Hide::Layout)];
        for hide in hidden.iter().filter(|(on, _)| *on).map(|(_, hide)| *hide) {
            let (stripped, refs) = strip_headings(&tb.book, hide);
            if !refs.is_empty() {
                let (units, _, rows) = featurizer.gaps(&stripped, max_tokens)?;
                let mut labels = vec![false; units.len().saturating_sub(1)];
                for r in refs {
                    if let Some(g) = units.gap_at(r) {
                        labels[g] = true;
                    }
                }
                push_rows(&mut data, &rows, &labels, &units, 1.0);
            }
        }
        if views.visible || !tb.feedback.is_empty() {
            let (units, _, rows) = featurizer.gaps(&tb.book, max_tokens)?;
            let n_gaps = units.len().saturating_sub(1);
            if views.visible && !tb.book.headings().is_empty() {
                let col = featurizer
                    .features
                    .names(featurizer.encoder.dim())
                    .iter()
                    .position(|n| n == "heading_next")
                    .unwrap_or(0);
                let labels: Vec<bool> = (0..n_gaps).map(|g| rows[g * dim + col] > 0.5).collect();
                push_rows(&mut data, &rows, &labels, &units, 1.0);
            }
            for f in &tb.feedback {
                let (at, label) = f.label();
                if let Some(g) = units.gap_at(at) {
                    data.push(&rows[g * dim..(g + 1) * dim], label, FEEDBACK_WEIGHT);
                    feedback_rows += 1;
                }
            }
        }
    }
    Ok((data, feedback_rows))
}

fn push_rows(data: &mut TrainingData, rows: &[f32], labels: &[bool], units: &Units, weight: f32) {
    let dim = data.dim;
    for (g, &label) in labels.iter().enumerate() {
        // Cuts inside a sentence are never taken by choice: leave them out.
        if units.sentence[g] == units.sentence[g + 1] {
            continue;
        }
        data.push(&rows[g * dim..(g + 1) * dim], label, weight);
    }
}

/// Trains a boundary model on `books` (see [`training_data`]).
pub fn train(
    featurizer: &Featurizer,
    books: &[TrainingBook],
    views: Views,
    config: &TrainConfig,
    progress: &dyn Fn(&str),
) -> Result<BoundaryModel, LearnedError> {
    let max_tokens = LearnedConfig::default().chunk_tokens;
    let (data, feedback_examples) = training_data(featurizer, books, views, max_tokens, progress)?;
    progress(&format!("training on {} gaps", data.len()));
    let encoder = featurizer.encoder.identity();
    let meta = ModelMeta {
        format: model::MODEL_FORMAT.into(),
        version: model::MODEL_VERSION,
        features: featurizer.features.clone(),
        encoder_name: encoder.name.clone(),
        encoder_hash: encoder.hash.clone(),
        encoder_dim: featurizer.encoder.dim(),
        hidden: config.hidden,
        prior_shift: 0.0,
        training: TrainSummary {
            books: books.iter().map(|b| b.name.clone()).collect(),
            feedback_examples,
            ..TrainSummary::default()
        },
    };
    BoundaryModel::train(&data, meta, config)
}
