//! A fixed-size log-linear latency histogram.
//!
//! Every power of two is split into [`SUB_BUCKETS`] equal buckets, so a
//! recorded value is known to within 1/128 (under 0.8%) of itself. The
//! bucket array is allocated once; recording is an index computation and an
//! increment, with no allocation. Histograms of different tasks are merged
//! at the end.

/// Bits of linear resolution within each power of two.
const SUB_BITS: u32 = 7;
/// Linear buckets per power of two.
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Exponent of the highest power of two tracked: values of 2^(MAX_EXP + 1)
/// nanoseconds (about 73 minutes) and more land in the last bucket.
const MAX_EXP: u32 = 41;
/// Buckets in all: values below `2 * SUB_BUCKETS` each have their own, then
/// `SUB_BUCKETS` for each power of two from `SUB_BITS + 1` to `MAX_EXP`.
const BUCKETS: usize = (2 * SUB_BUCKETS + (MAX_EXP - SUB_BITS) as u64 * SUB_BUCKETS) as usize;

/// Counts of values (latencies in nanoseconds) in log-linear buckets, with
/// the exact count, sum, minimum and maximum kept beside them.
pub struct Histogram {
    /// One count per bucket, [`BUCKETS`] long.
    counts: Box<[u64]>,
    /// Values recorded.
    count: u64,
    /// Sum of the values recorded, for the mean.
    sum: u128,
    /// Smallest value recorded (`u64::MAX` while empty).
    min: u64,
    /// Largest value recorded.
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram; the only allocation it ever makes.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest value recorded, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.0 to 1.0): the highest value of the
    /// bucket holding the `ceil(q * count)`-th smallest value, never more
    /// than the maximum recorded. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return highest_in(index).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// The bucket a value falls in.
fn bucket_of(value: u64) -> usize {
    if value < 2 * SUB_BUCKETS {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    let mantissa = value >> shift; // in SUB_BUCKETS..2 * SUB_BUCKETS
    (2 * SUB_BUCKETS + u64::from(exp - SUB_BITS - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS))
        as usize
}

/// The highest value that falls in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB_BUCKETS {
        return index;
    }
    let above = index - 2 * SUB_BUCKETS;
    let exp = (above / SUB_BUCKETS) as u32 + SUB_BITS + 1;
    let mantissa = SUB_BUCKETS + above % SUB_BUCKETS;
    let shift = exp - SUB_BITS;
    (mantissa << shift) + ((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order_within_one_percent() {
        let mut previous = 0;
        let mut value = 1u64;
        while value < 1 << (MAX_EXP + 1) {
            let bucket = bucket_of(value);
            assert!(bucket >= previous, "buckets go down at {value}");
            assert!(bucket < BUCKETS);
            let high = highest_in(bucket);
            assert!(high >= value, "{value} above its bucket's top {high}");
            assert!(
                (high - value) as f64 <= value as f64 / 100.0 + 1.0,
                "{value} in a bucket up to {high}"
            );
            previous = bucket;
            value = value + value / 97 + 1;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(highest_in(BUCKETS - 1)), BUCKETS - 1);
    }

    #[test]
    fn bucket_edges_meet() {
        for index in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(highest_in(index)), index);
            assert_eq!(bucket_of(highest_in(index) + 1), index + 1);
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.01;
        assert!(close(h.quantile(0.5), 50_000_000), "{}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 99_000_000), "{}", h.quantile(0.99));
        assert!(close(h.quantile(0.999), 99_900_000));
        assert_eq!(h.quantile(1.0), 100_000_000);
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.count(), 100_000);
        assert!((h.mean() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn merge_adds_counts_and_extremes() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(5_000_000);
        b.record(7);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 5_000_000);
        assert_eq!(a.quantile(0.0), 7);
        assert_eq!(a.quantile(0.5), 10);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
