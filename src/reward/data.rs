//! Training and evaluation data for the reward models: the stored feedback (with each node's
//! stored candidates, which demonstrations and critiques are compared with) or a data file (TRL
//! pairs, rating rows, feedback records), through [`crate::feedback::learn::build`].

use std::path::Path;

use crate::compose::sample::candidates_by_input;
use crate::feedback::learn::{self, LearnOptions, TrainingData};
use crate::feedback::{self, io, FeedbackError};
use crate::store::Store;

/// The training data the stored feedback implies under `options`.
pub fn from_store(store: &Store, options: &LearnOptions) -> Result<TrainingData, FeedbackError> {
    let records = feedback::all(store)?;
    let stored = candidates_by_input(store)?;
    let candidates = |key: &str| -> Vec<String> {
        stored
            .get(key)
            .map(|n| n.candidates.iter().map(|c| c.text.clone()).collect())
            .unwrap_or_default()
    };
    Ok(learn::build(&records, &[], options, &candidates))
}

/// The training data a file implies under `options` (see [`io::read_data`] for its lines).
pub fn from_file(path: &Path, options: &LearnOptions) -> Result<TrainingData, FeedbackError> {
    let file = io::read_data(path)?;
    Ok(learn::build(&file.records, &file.pairs, options, &|_| Vec::new()))
}
