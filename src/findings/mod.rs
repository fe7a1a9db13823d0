//! Findings: one per token and installation it concerns (or one unattributed), from decision to
//! outcome. [`lifecycle`] is the state machine as types (states, outcomes, labels, the allowed
//! transitions), [`payload`] what a finding keeps sealed, and [`store`] the only code that reads or
//! writes the `findings` table. Must not import the revocation engine or HTTP: they drive findings
//! through these types.

pub mod lifecycle;
pub mod payload;
pub mod store;

pub use lifecycle::{FindingState, Label, Outcome, Step};
pub use payload::Payload;
pub use store::{Filter, FindingView, get, last_error, list, newest};
