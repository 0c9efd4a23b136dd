//! Kafka, written once for every callstream binary:
//!
//! * [`settings`]: the brokers, librdkafka properties and topic names
//!   (one [`Topic`](callstream_schemas::Topic) enum mapped to configured
//!   names, here only);
//! * [`client`]: each kind of client's configuration, and the
//!   durable-producer policy;
//! * [`publish`]: the durable [`Publisher`](publish::Publisher), whose
//!   `Ok` means every record was acknowledged by all in-sync replicas;
//! * [`wire`]: the records and headers of every topic, encoded and
//!   decoded in one place;
//! * [`consume`], [`lag`], [`dead_letter`]: the parts of a consumer loop;
//! * [`embedded`]: the in-process broker for trying things out and tests.

pub mod batch;
pub mod client;
pub mod consume;
pub mod dead_letter;
pub mod embedded;
pub(crate) mod lag;
pub mod per_record;
pub mod publish;
pub(crate) mod settings;
pub mod topics;
pub mod wire;

pub use settings::{ClientSettings, TopicNames};
