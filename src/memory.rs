//! Repository memory: what the user's own code says comes next.
//!
//! [`Index`] is an unbounded n-gram index (a suffix array, as infini-gram builds) over the token
//! ids of a set of documents: for any context it finds the longest suffix that occurs in them and
//! counts what followed each occurrence. [`Memory`] turns that into a next-token prior that
//! generation mixes into the model's distribution, with weights fitted on held-out text. It lives
//! on token ids, so it works for every model infill loads; the model knows it only through the
//! `Prior` trait.

mod index;
mod prior;

pub use index::{Continuation, Index, Match, Occurrence};
pub use prior::{Memory, Sample, Weights};
