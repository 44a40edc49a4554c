//! Which partitions the topics have, from the broker's metadata.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Each of `topics` with its partition count; 0 for a topic the broker does
/// not have. Blocks for up to 10 s per topic: call it off async workers.
pub fn partition_counts<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topics: &[String],
) -> KafkaResult<Vec<(String, i32)>> {
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        out.push((topic.clone(), n as i32));
    }
    Ok(out)
}
