//! The read model: a local table of every artifact's newest status snapshot
//! (`table`), built from the compacted status topic by its Kafka follower
//! (`follow`). Every API instance holds every artifact; the handlers read
//! the table, the projector asks it which generations are settled.

mod follow;
mod table;

pub use follow::follow_status_topic;
pub use table::{StatusTable, TableError};
