//! Split corrections, as the learned decomposer reads them: the record type lives with the other
//! feedback kinds in [`crate::feedback::split`].

pub use crate::feedback::split::{SplitAction, SplitFeedback, KEY_PREFIX};
