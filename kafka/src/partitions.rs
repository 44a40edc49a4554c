//! What the broker says about partitions: how many a topic has, and where
//! each one's log starts and ends.
//!
//! Two sources for the end of a log, which disagree on Tansu 0.6: a
//! watermark request (ListOffsets, [`watermarks`]) there reports the last
//! record batch's base offset plus one, while its fetch responses carry the
//! real end ([`fetched_end`]). Code that compares a position with the end
//! therefore reads the log up to it (see [`crate::resume`]).

use std::ffi::CString;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

use crate::Tp;

/// How long one metadata or watermark request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Each of `topics` with its partition count; 0 for a topic the broker does
/// not have. Blocks for up to 10 s per topic: call it off async workers.
pub fn partition_counts<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topics: &[String],
) -> KafkaResult<Vec<(String, i32)>> {
    let mut out = Vec::with_capacity(topics.len());
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        out.push((topic.clone(), n as i32));
    }
    Ok(out)
}

/// A listed partition the broker does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`kafka.partitions` lists partition {partition}, but topic {topic} has {count} \
     (0 to {last}): list only partitions every topic has"
)]
pub struct NoSuchPartition {
    pub topic: String,
    pub partition: i32,
    pub count: i32,
    last: i32,
}

/// The partitions a process reads without a group: every partition of each
/// topic in `counts` (topic, partition count) when `only` is `None`
/// (`assignment = "all"`), else the partitions `only` lists, of every topic
/// (`assignment = "partitions"`).
pub fn chosen_partitions(
    counts: &[(String, i32)],
    only: Option<&[i32]>,
) -> Result<Vec<Tp>, NoSuchPartition> {
    let mut out = Vec::new();
    for (topic, count) in counts {
        match only {
            None => out.extend((0..*count).map(|p| (topic.clone(), p))),
            Some(list) => {
                for &partition in list {
                    if partition >= *count {
                        return Err(NoSuchPartition {
                            topic: topic.clone(),
                            partition,
                            count: *count,
                            last: count - 1,
                        });
                    }
                    out.push((topic.clone(), partition));
                }
            }
        }
    }
    Ok(out)
}

/// Where a partition's log starts and ends, as a watermark request reports
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset still in the log.
    pub low: i64,
    /// One past the last offset, as reported (on Tansu 0.6: one past the
    /// last record batch's base offset, up to a batch short of the end).
    pub high: i64,
}

impl Watermarks {
    /// Nothing known: the whole offset range.
    pub const UNKNOWN: Watermarks = Watermarks {
        low: 0,
        high: i64::MAX,
    };
}

/// The partition's watermarks. Blocks for up to 10 s.
pub fn watermarks<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> KafkaResult<Watermarks> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, BROKER_TIMEOUT)?;
    Ok(Watermarks { low, high })
}

/// The end of the partition's log as the last fetch response for it said
/// (librdkafka's cached high watermark; right on Tansu too), or `None`
/// before any fetch of it has answered. Does not block.
pub fn fetched_end<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let name = CString::new(topic).ok()?;
    let (mut low, mut high) = (0i64, 0i64);
    // SAFETY: the client is alive (borrowed through `consumer`), the name is
    // NUL-terminated and outlives the call, and both out-pointers are valid.
    let err = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            name.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    // librdkafka answers RD_KAFKA_OFFSET_INVALID (-1001) until it knows.
    (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_the_listed_partitions_of_every_topic() {
        let counts = [("a".to_owned(), 3), ("b".to_owned(), 2)];
        let tp = |t: &str, p| (t.to_owned(), p);
        assert_eq!(
            chosen_partitions(&counts, None).unwrap(),
            vec![tp("a", 0), tp("a", 1), tp("a", 2), tp("b", 0), tp("b", 1)]
        );
        assert_eq!(
            chosen_partitions(&counts, Some(&[1, 0])).unwrap(),
            vec![tp("a", 1), tp("a", 0), tp("b", 1), tp("b", 0)]
        );
        let e = chosen_partitions(&counts, Some(&[2])).unwrap_err();
        assert_eq!((e.topic.as_str(), e.partition, e.count), ("b", 2, 2));
        assert!(e.to_string().contains("kafka.partitions"), "{e}");
    }
}
