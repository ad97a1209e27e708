//! One module per row of issue 7 (and row 7, restarts, of issue 8; row 8, spawn cost, of
//! issue 14; row 9, readiness, of issue 15; row 10, stacks, of issue 16; rows 11 and 12, the
//! proxy mode). Each returns table rows ([`crate::Row`]).

pub mod first_reply;
pub mod launch;
pub mod overhead;
pub mod parallel;
pub mod races;
pub mod readiness;
pub mod receiver;
pub mod restarts;
pub mod serving;
pub mod spawn;
pub mod stacks;
pub mod throughput;
