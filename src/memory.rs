//! Repository memory: what the user's own code says comes next.
//!
//! [`Index`] is an unbounded n-gram index (a suffix array, as infini-gram builds) over the token
//! ids of a set of documents: for any context it finds the longest suffix that occurs in them and
//! counts what followed each occurrence. It lives on token ids, so it works for every model infill
//! loads, and it imports nothing above `text`.

mod index;

pub use index::{Continuation, Index, Match, Occurrence};
