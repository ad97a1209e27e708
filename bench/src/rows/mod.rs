//! One module per row of issue 7 (and row 7, restarts, of issue 8; row 8, spawn cost, of
//! issue 14). Each returns table rows
//! ([`crate::Row`]).

pub mod launch;
pub mod overhead;
pub mod parallel;
pub mod races;
pub mod readiness;
pub mod receiver;
pub mod restarts;
pub mod serving;
pub mod spawn;
