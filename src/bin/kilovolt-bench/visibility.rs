//! `--visible-at`: how long a write takes to show at another node. One ONE
//! Set at a time to the first `--addr`, then LOCAL Gets of the key at the
//! other node, back to back over one open connection, until the value
//! shows. Without a process or a connection per poll, what is measured is
//! the cluster's replication delay plus at most one Get.

use std::time::{Duration, Instant};

use kilovolt::proto::{self, Consistency};

use crate::Client;

/// What the writes measured: from sending each Set to the first Get that
/// saw its value, in microseconds.
pub struct Visibility {
    /// Each write's time until visible, sorted.
    pub took_us: Vec<u64>,
}

impl Visibility {
    /// The median.
    pub fn p50_us(&self) -> u64 {
        self.took_us[self.took_us.len() / 2]
    }

    /// The largest.
    pub fn max_us(&self) -> u64 {
        self.took_us.last().copied().unwrap_or(0)
    }
}

/// Makes `writes` writes of `value` with `writer` (keys of their own, named
/// by `tag`) and waits for each to show at `reader`, at most `limit` each.
/// Fails naming the write that never showed, or the first failed request.
pub async fn measure(
    mut writer: Client,
    mut reader: Client,
    writes: usize,
    value: &str,
    tag: u128,
    limit: Duration,
) -> Result<Visibility, String> {
    let mut took_us = Vec::with_capacity(writes);
    for i in 0..writes {
        let key = format!("visible-{tag}-{i}");
        let start = Instant::now();
        writer
            .set(proto::SetRequest {
                key: key.clone(),
                value: value.to_string(),
                consistency: Consistency::One.into(),
                ttl_ms: 0,
            })
            .await
            .map_err(|s| format!("Set {key}: {}", s.message()))?;
        loop {
            let got = reader
                .get(proto::GetRequest {
                    key: key.clone(),
                    consistency: Consistency::Local.into(),
                })
                .await
                .map_err(|s| format!("Get {key}: {}", s.message()))?
                .into_inner();
            if got.found && got.value == value {
                break;
            }
            if start.elapsed() > limit {
                return Err(format!("{key} was not visible after {limit:?}"));
            }
        }
        took_us.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    took_us.sort_unstable();
    Ok(Visibility { took_us })
}
