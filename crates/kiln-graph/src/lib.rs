//! The pipeline graph: immutable values and their cache keys.
//!
//! A pipeline builds values — [`Container`], [`Directory`], [`File`],
//! [`Secret`], [`CacheVolume`] — each an `Arc` node holding the operation that
//! made it and its inputs. Building a value does no work; the engine solves
//! the nodes a terminal operation needs.
//!
//! Every node has a [`Key`]: BLAKE3 over a canonical, length-prefixed
//! encoding of the operation and the keys of its inputs ([`KeyBuilder`]).
//! Leaves whose key needs I/O — an image's manifest digest, a host
//! directory's content, a secret's salted hash — come from the engine through
//! [`LeafKeys`]; this crate does no I/O itself.
//!
//! Invariants:
//! - A key depends only on content: never on host paths, timestamps, or a
//!   secret's plain value.
//! - Cache volume contents are never part of a key (only their name, mount
//!   path and sharing mode).
//! - Changing what an operation means requires bumping [`ENCODING_VERSION`].

mod derive;
mod key;
mod limits;
mod node;

pub use derive::{container_op_name, Keyer, LeafKeys};
pub use key::{Key, KeyBuilder, ENCODING_VERSION};
pub use limits::{parse_cpus, parse_duration, parse_memory, Limits};
pub use node::*;
