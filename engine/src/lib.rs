//! The replication engine's shared building blocks. Today: the journal format,
//! its multi-appender writer and crash recovery, and the limits every part obeys.
//! Frames, transport, staging and the protocol join it in later work.

pub mod checksum;
pub mod clock;
pub mod frame;
pub mod journal;
pub mod limits;
pub mod protocol;
pub mod report;
pub mod staging;
pub mod sys;
pub mod trace;
pub mod transport;
pub mod workload;
