//! rrm: recursive reward modeling for book summarization.
//!
//! A book is split into a tree of small summarization tasks ([`tree::TaskTree`], built by a
//! [`decompose::Decomposer`]); a language model ([`infer::Generator`]) summarizes the leaves and
//! then the summaries, up to the root; people rate individual nodes; one reward model per tree
//! height learns from that feedback and picks the best candidate. See `ARCHITECTURE.md`.

pub mod book;
pub mod cli;
pub mod compose;
pub mod decompose;
pub mod eval;
pub mod feedback;
pub mod grounding;
pub mod infer;
pub mod lm;
pub mod policy;
pub mod reward;
pub mod serve;
pub mod store;
pub mod tree;
pub mod workspace;
