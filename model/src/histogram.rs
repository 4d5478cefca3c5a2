//! Native histograms in the form PromQL computes with: absolute float counts per bucket,
//! as Prometheus's `FloatHistogram`.
//!
//! Remote-write and OTLP deliver [`NativeHistogram`]s (integer counts as deltas, or float
//! counts, over spans of buckets); storage keeps them as [`FloatHistogram`]s, and the query
//! engine adds, subtracts, scales and compares them. Every operation here gives what
//! Prometheus 2.42's gives, bucket for bucket: the same buckets come out (empty ones
//! included, which `histogram_quantile(0, …)` can see), with the same counts, including
//! how a histogram of higher resolution is merged into one of lower resolution and how two
//! zero buckets of different widths are reconciled.
//!
//! Buckets are kept as `(index, count)` pairs rather than Prometheus's spans: every
//! Prometheus operation reads buckets through iterators that hide the span layout, so the
//! pairs give the same answers and make merging plain.

use serde::{Deserialize, Serialize};

use crate::{BucketSpan, HistogramCounts, NativeHistogram, ResetHint, is_stale_nan};

/// A native histogram with absolute float counts.
///
/// Positive bucket `i` holds observations in `(bound(i-1), bound(i)]`, negative bucket `i`
/// those in `[-bound(i), -bound(i-1))`, where `bound(i) = 2^(i·2^-schema)` (see
/// [`bucket_bound`]); the zero bucket holds those in `[-zero_threshold, zero_threshold]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FloatHistogram {
    pub counter_reset: ResetHint,
    /// Resolution, -4..=8: each power of two is split into `2^schema` buckets.
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    /// Observations in all buckets.
    pub count: f64,
    /// Sum of the observations; the staleness marker when it is Prometheus's stale NaN.
    pub sum: f64,
    /// `(index, count)` of the positive buckets present, by ascending index. A bucket may
    /// be present with a count of 0.
    pub positive: Vec<(i32, f64)>,
    /// `(index, count)` of the negative buckets present, by ascending index (ascending
    /// distance from zero).
    pub negative: Vec<(i32, f64)>,
}

/// One bucket with its boundaries, as Prometheus's bucket iterators give it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
    pub count: f64,
}

impl FloatHistogram {
    /// The float form of a histogram as it arrived: integer deltas become absolute counts.
    pub fn from_native(histogram: &NativeHistogram) -> Self {
        let (count, zero_count, positive, negative) = match &histogram.counts {
            HistogramCounts::Integer {
                count,
                zero_count,
                positive_deltas,
                negative_deltas,
            } => {
                // Prometheus's `ToFloat`: each delta added to the running count as a float.
                let absolute = |deltas: &[i64]| -> Vec<f64> {
                    let mut current = 0.0;
                    deltas
                        .iter()
                        .map(|d| {
                            current += *d as f64;
                            current
                        })
                        .collect()
                };
                (
                    *count as f64,
                    *zero_count as f64,
                    absolute(positive_deltas),
                    absolute(negative_deltas),
                )
            }
            HistogramCounts::Float {
                count,
                zero_count,
                positive_counts,
                negative_counts,
            } => (
                *count,
                *zero_count,
                positive_counts.clone(),
                negative_counts.clone(),
            ),
        };
        Self {
            counter_reset: histogram.reset_hint,
            schema: histogram.schema,
            zero_threshold: histogram.zero_threshold,
            zero_count,
            count,
            sum: histogram.sum,
            positive: with_indexes(&histogram.positive_spans, positive),
            negative: with_indexes(&histogram.negative_spans, negative),
        }
    }

    /// Whether this sample is a staleness marker (its sum is the stale NaN).
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.sum)
    }

    /// Multiplies every count and the sum by `factor`.
    pub fn scale(&mut self, factor: f64) {
        self.zero_count *= factor;
        self.count *= factor;
        self.sum *= factor;
        for (_, count) in self.positive.iter_mut().chain(self.negative.iter_mut()) {
            *count *= factor;
        }
    }

    /// Adds `other`. The result has the lower of the two resolutions (the higher one is
    /// merged into it) and a zero bucket wide enough for both.
    pub fn add(&mut self, other: &FloatHistogram) {
        self.combine(other, 1.0);
    }

    /// Subtracts `other`, as [`FloatHistogram::add`] adds.
    pub fn sub(&mut self, other: &FloatHistogram) {
        self.combine(other, -1.0);
    }

    fn combine(&mut self, other: &FloatHistogram, sign: f64) {
        if other.schema < self.schema {
            // Prometheus always adds the finer histogram into the coarser one.
            *self = self.copy_to_schema(other.schema);
        }
        let other_zero_count = self.reconcile_zero_buckets(other);
        self.zero_count += sign * other_zero_count;
        self.count += sign * other.count;
        self.sum += sign * other.sum;
        for positive in [true, false] {
            let theirs = other.merged(positive, self.zero_threshold, self.schema);
            let ours = if positive {
                &mut self.positive
            } else {
                &mut self.negative
            };
            *ours = merge_buckets(ours, &theirs, sign);
        }
    }

    /// A copy at the lower resolution `schema` (at most this one's): each bucket there
    /// holds the counts of the buckets it covers here.
    pub fn copy_to_schema(&self, schema: i32) -> FloatHistogram {
        if schema >= self.schema {
            return self.clone();
        }
        FloatHistogram {
            counter_reset: ResetHint::Unknown,
            schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count,
            count: self.count,
            sum: self.sum,
            positive: self.merged(true, 0.0, schema),
            negative: self.merged(false, 0.0, schema),
        }
    }

    /// Drops the buckets whose count is 0 (Prometheus's `Compact(0)`).
    pub fn compact(&mut self) {
        self.positive.retain(|(_, count)| *count != 0.0);
        self.negative.retain(|(_, count)| *count != 0.0);
    }

    /// Whether going from `previous` to this histogram needs a counter reset: a count went
    /// down, a populated bucket went away, or the resolution rose or the zero bucket
    /// shrank (which only a reset does).
    pub fn detect_reset(&self, previous: &FloatHistogram) -> bool {
        if self.count < previous.count
            || self.schema > previous.schema
            || self.zero_threshold < previous.zero_threshold
        {
            return true;
        }
        let (previous_zero_count, threshold) =
            previous.zero_count_for_larger_threshold(self.zero_threshold);
        if threshold != self.zero_threshold || self.zero_count < previous_zero_count {
            return true;
        }
        [true, false].into_iter().any(|positive| {
            let current = self.merged(positive, self.zero_threshold, self.schema);
            let before = previous.merged(positive, self.zero_threshold, self.schema);
            buckets_reset(&current, &before)
        })
    }

    /// Every bucket from the lowest to the highest, the zero bucket in between when it
    /// holds anything, as Prometheus's `AllBucketIterator`: the buckets next to the zero
    /// bucket end at its threshold.
    pub fn all_buckets(&self) -> Vec<Bucket> {
        let mut out = Vec::with_capacity(self.positive.len() + self.negative.len() + 1);
        for &(index, count) in self.negative.iter().rev() {
            let lower = -bucket_bound(index, self.schema);
            let upper = -bucket_bound(index.saturating_sub(1), self.schema);
            out.push(Bucket {
                lower,
                upper: if upper > -self.zero_threshold {
                    -self.zero_threshold
                } else {
                    upper
                },
                lower_inclusive: lower < 0.0,
                upper_inclusive: upper > 0.0,
                count,
            });
        }
        if self.zero_count > 0.0 {
            out.push(Bucket {
                lower: -self.zero_threshold,
                upper: self.zero_threshold,
                lower_inclusive: true,
                upper_inclusive: true,
                count: self.zero_count,
            });
        }
        for &(index, count) in &self.positive {
            let upper = bucket_bound(index, self.schema);
            if upper <= 0.0 {
                continue; // below the smallest float: Prometheus's iterator skips it
            }
            let lower = bucket_bound(index.saturating_sub(1), self.schema);
            out.push(Bucket {
                lower: if lower < self.zero_threshold {
                    self.zero_threshold
                } else {
                    lower
                },
                upper,
                lower_inclusive: lower < 0.0,
                upper_inclusive: upper > 0.0,
                count,
            });
        }
        out
    }

    /// The buckets of one side at resolution `schema` (at most this one's), leaving out
    /// those whose upper bound in absolute value is at most `absolute_start`: Prometheus's
    /// `floatBucketIterator`.
    fn merged(&self, positive: bool, absolute_start: f64, schema: i32) -> Vec<(i32, f64)> {
        let source = if positive {
            &self.positive
        } else {
            &self.negative
        };
        let shift = (self.schema - schema).clamp(0, 31);
        let mut out: Vec<(i32, f64)> = Vec::with_capacity(source.len());
        for &(index, count) in source {
            let target = if shift == 0 {
                index
            } else {
                (((i64::from(index) - 1) >> shift) + 1) as i32
            };
            match out.last_mut() {
                Some(last) if last.0 == target => last.1 += count,
                _ => out.push((target, count)),
            }
        }
        out.retain(|(index, _)| bucket_bound(*index, schema) > absolute_start);
        out
    }

    /// What the zero count would be with the (not smaller) threshold `larger`, and the
    /// threshold itself, raised to a bucket boundary if it would split a populated bucket.
    fn zero_count_for_larger_threshold(&self, larger: f64) -> (f64, f64) {
        let mut larger = larger;
        if larger == self.zero_threshold {
            return (self.zero_count, larger);
        }
        'again: loop {
            let mut count = self.zero_count;
            for &(index, bucket_count) in &self.positive {
                let (lower, upper) = (
                    bucket_bound(index.saturating_sub(1), self.schema),
                    bucket_bound(index, self.schema),
                );
                if upper <= 0.0 {
                    continue;
                }
                if lower >= larger {
                    break;
                }
                count += bucket_count;
                if upper > larger {
                    if bucket_count != 0.0 {
                        larger = upper;
                    }
                    break;
                }
            }
            for &(index, bucket_count) in &self.negative {
                let (lower, upper) = (
                    -bucket_bound(index, self.schema),
                    -bucket_bound(index.saturating_sub(1), self.schema),
                );
                if -lower <= 0.0 {
                    continue;
                }
                if upper <= -larger {
                    break;
                }
                count += bucket_count;
                if lower < -larger {
                    if bucket_count != 0.0 {
                        // The positive side must be looked at again with this threshold.
                        larger = -lower;
                        continue 'again;
                    }
                    break;
                }
            }
            return (count, larger);
        }
    }

    /// Empties the buckets inside the zero bucket (their counts are already in the zero
    /// count), then drops every empty bucket, as Prometheus does (it compacts to trim).
    fn trim_buckets_in_zero_bucket(&mut self) {
        let (schema, threshold) = (self.schema, self.zero_threshold);
        for (index, count) in self.positive.iter_mut() {
            if bucket_bound(index.saturating_sub(1), schema) >= threshold {
                break;
            }
            *count = 0.0;
        }
        for (index, count) in self.negative.iter_mut() {
            if -bucket_bound(index.saturating_sub(1), schema) <= -threshold {
                break;
            }
            *count = 0.0;
        }
        self.compact();
    }

    /// Widens this histogram's zero bucket, or finds how `other`'s would widen, until both
    /// have one threshold; returns `other`'s zero count at that threshold.
    fn reconcile_zero_buckets(&mut self, other: &FloatHistogram) -> f64 {
        let (mut other_count, mut other_threshold) = (other.zero_count, other.zero_threshold);
        // Each round raises one threshold to a bucket boundary; a handful of rounds ends
        // it. The bound keeps a NaN threshold (never stored) from looping for ever.
        for _ in 0..64 {
            if other_threshold == self.zero_threshold {
                break;
            }
            if self.zero_threshold > other_threshold {
                (other_count, other_threshold) =
                    other.zero_count_for_larger_threshold(self.zero_threshold);
            }
            if other_threshold > self.zero_threshold {
                (self.zero_count, self.zero_threshold) =
                    self.zero_count_for_larger_threshold(other_threshold);
                self.trim_buckets_in_zero_bucket();
            }
        }
        other_count
    }
}

/// The `(index, count)` pairs of buckets laid out by `spans`.
fn with_indexes(spans: &[BucketSpan], counts: Vec<f64>) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(counts.len());
    let mut counts = counts.into_iter();
    let mut index: i64 = 0;
    for span in spans {
        index += i64::from(span.offset);
        for _ in 0..span.length {
            let Some(count) = counts.next() else {
                return out;
            };
            out.push((
                index.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                count,
            ));
            index += 1;
        }
    }
    out
}

/// `ours` with `sign · theirs` added bucket by bucket; buckets only `theirs` has are
/// inserted in index order.
fn merge_buckets(ours: &[(i32, f64)], theirs: &[(i32, f64)], sign: f64) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(ours.len().max(theirs.len()));
    let (mut a, mut b) = (ours.iter().peekable(), theirs.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push((x.0, x.1 + sign * y.1));
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(**x);
                a.next();
            }
            (_, Some(y)) => {
                out.push((y.0, sign * y.1));
                b.next();
            }
            (Some(x), None) => {
                out.push(**x);
                a.next();
            }
            (None, None) => return out,
        }
    }
}

/// Whether a bucket of `previous` went away while populated, or holds less in `current`.
fn buckets_reset(current: &[(i32, f64)], previous: &[(i32, f64)]) -> bool {
    let mut current = current.iter().peekable();
    for &(index, count) in previous {
        while current.next_if(|(i, _)| *i < index).is_some() {}
        match current.peek() {
            Some((i, c)) if *i == index && *c < count => return true,
            Some((i, _)) if *i == index => {}
            _ if count != 0.0 => return true,
            _ => {}
        }
    }
    false
}

/// The upper bound of bucket `index` at resolution `schema` (`2^(index·2^-schema)`),
/// exactly as Prometheus computes it: the last finite bucket ends at `f64::MAX` and the
/// one after it at +Inf.
pub fn bucket_bound(index: i32, schema: i32) -> f64 {
    if schema < 0 {
        let exponent = i64::from(index) << (-schema).min(8);
        if exponent == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exponent);
    }
    let schema = schema.min(8);
    let fraction_index = (index & ((1 << schema) - 1)) as usize;
    let fraction = EXPONENTIAL_BOUNDS[(1usize << schema) - 1 + fraction_index];
    let exponent = i64::from(index >> schema) + 1;
    if fraction == 0.5 && exponent == 1025 {
        return f64::MAX;
    }
    ldexp(fraction, exponent)
}

/// `fraction · 2^exponent`, scaled in steps so that no power of two overflows on the way.
fn ldexp(fraction: f64, exponent: i64) -> f64 {
    let power = |e: i64| f64::from_bits(((e + 1023) as u64) << 52);
    let mut value = fraction;
    let mut exponent = exponent.clamp(-2200, 2200);
    while exponent > 1023 {
        value *= power(1023);
        exponent -= 1023;
    }
    while exponent < -1022 {
        value *= power(-1022);
        exponent += 1022;
    }
    value * power(exponent)
}

/// The bucket boundaries in `[0.5, 1)` of schemas 0 to 8, schema `s` taking `2^s` entries
/// from index `2^s - 1`. They are Prometheus's own table (`model/histogram/generic.go`),
/// not the correctly rounded `2^(i/2^s - 1)`, from which a third of its entries differ by
/// an ulp or two: a bucket is only the same bucket as Prometheus's, in JSON and in every
/// comparison, if its boundary is bit for bit the same.
#[rustfmt::skip]
const EXPONENTIAL_BOUNDS: [f64; 511] = [
    // Schema 0.
    0.5,
    // Schema 1.
    0.5, 0.7071067811865475,
    // Schema 2.
    0.5, 0.5946035575013605, 0.7071067811865475, 0.8408964152537144,
    // Schema 3.
    0.5, 0.5452538663326288, 0.5946035575013605, 0.6484197773255048,
    0.7071067811865475, 0.7711054127039704, 0.8408964152537144, 0.9170040432046711,
    // Schema 4.
    0.5, 0.5221368912137069, 0.5452538663326288, 0.5693943173783458,
    0.5946035575013605, 0.620928906036742, 0.6484197773255048, 0.6771277734684463,
    0.7071067811865475, 0.7384130729697496, 0.7711054127039704, 0.805245165974627,
    0.8408964152537144, 0.8781260801866495, 0.9170040432046711, 0.9576032806985735,
    // Schema 5.
    0.5, 0.5109485743270583, 0.5221368912137069, 0.5335702003384117,
    0.5452538663326288, 0.5571933712979462, 0.5693943173783458, 0.5818624293887887,
    0.5946035575013605, 0.6076236799902344, 0.620928906036742, 0.6345254785958666,
    0.6484197773255048, 0.6626183215798706, 0.6771277734684463, 0.6919549409819159,
    0.7071067811865475, 0.7225904034885232, 0.7384130729697496, 0.7545822137967112,
    0.7711054127039704, 0.7879904225539431, 0.805245165974627, 0.8228777390769823,
    0.8408964152537144, 0.8593096490612387, 0.8781260801866495, 0.8973545375015533,
    0.9170040432046711, 0.9370838170551498, 0.9576032806985735, 0.9785720620876999,
    // Schema 6.
    0.5, 0.5054446430258502, 0.5109485743270583, 0.5165124395106142,
    0.5221368912137069, 0.5278225891802786, 0.5335702003384117, 0.5393803988785598,
    0.5452538663326288, 0.5511912916539204, 0.5571933712979462, 0.5632608093041209,
    0.5693943173783458, 0.5755946149764913, 0.5818624293887887, 0.5881984958251406,
    0.5946035575013605, 0.6010783657263515, 0.6076236799902344, 0.6142402680534349,
    0.620928906036742, 0.6276903785123455, 0.6345254785958666, 0.6414350080393891,
    0.6484197773255048, 0.6554806057623822, 0.6626183215798706, 0.6698337620266515,
    0.6771277734684463, 0.6845012114872953, 0.6919549409819159, 0.6994898362691555,
    0.7071067811865475, 0.7148066691959849, 0.7225904034885232, 0.7304588970903234,
    0.7384130729697496, 0.7464538641456323, 0.7545822137967112, 0.762799075372269,
    0.7711054127039704, 0.7795022001189185, 0.7879904225539431, 0.7965710756711334,
    0.805245165974627, 0.8140137109286738, 0.8228777390769823, 0.8318382901633681,
    0.8408964152537144, 0.8500531768592616, 0.8593096490612387, 0.8686669176368529,
    0.8781260801866495, 0.8876882462632604, 0.8973545375015533, 0.9071260877501991,
    0.9170040432046711, 0.9269895625416926, 0.9370838170551498, 0.9472879907934827,
    0.9576032806985735, 0.9680308967461471, 0.9785720620876999, 0.9892280131939752,
    // Schema 7.
    0.5, 0.5027149505564014, 0.5054446430258502, 0.5081891574554764,
    0.5109485743270583, 0.5137229745593818, 0.5165124395106142, 0.5193170509806894,
    0.5221368912137069, 0.5249720429003435, 0.5278225891802786, 0.5306886136446309,
    0.5335702003384117, 0.5364674337629877, 0.5393803988785598, 0.5423091811066545,
    0.5452538663326288, 0.5482145409081883, 0.5511912916539204, 0.5541842058618393,
    0.5571933712979462, 0.5602188762048033, 0.5632608093041209, 0.5663192597993595,
    0.5693943173783458, 0.572486072215902, 0.5755946149764913, 0.5787200368168754,
    0.5818624293887887, 0.585021884841625, 0.5881984958251406, 0.5913923554921704,
    0.5946035575013605, 0.5978321960199137, 0.6010783657263515, 0.6043421618132907,
    0.6076236799902344, 0.6109230164863786, 0.6142402680534349, 0.6175755319684665,
    0.620928906036742, 0.6243004885946023, 0.6276903785123455, 0.6310986751971253,
    0.6345254785958666, 0.637970889198196, 0.6414350080393891, 0.6449179367033329,
    0.6484197773255048, 0.6519406325959679, 0.6554806057623822, 0.659039800633032,
    0.6626183215798706, 0.6662162735415805, 0.6698337620266515, 0.6734708931164728,
    0.6771277734684463, 0.6808045103191123, 0.6845012114872953, 0.688217985377265,
    0.6919549409819159, 0.6957121878859629, 0.6994898362691555, 0.7032879969095076,
    0.7071067811865475, 0.7109463010845827, 0.7148066691959849, 0.718687998724491,
    0.7225904034885232, 0.7265139979245261, 0.7304588970903234, 0.7344252166684908,
    0.7384130729697496, 0.7424225829363761, 0.7464538641456323, 0.7505070348132126,
    0.7545822137967112, 0.7586795205991071, 0.762799075372269, 0.7669409989204777,
    0.7711054127039704, 0.7752924388424999, 0.7795022001189185, 0.7837348199827764,
    0.7879904225539431, 0.7922691326262467, 0.7965710756711334, 0.8008963778413465,
    0.805245165974627, 0.8096175675974316, 0.8140137109286738, 0.8184337248834821,
    0.8228777390769823, 0.8273458838280969, 0.8318382901633681, 0.8363550898207981,
    0.8408964152537144, 0.8454623996346523, 0.8500531768592616, 0.8546688815502312,
    0.8593096490612387, 0.8639756154809185, 0.8686669176368529, 0.8733836930995842,
    0.8781260801866495, 0.8828942179666361, 0.8876882462632604, 0.8925083056594671,
    0.8973545375015533, 0.9022270839033115, 0.9071260877501991, 0.9120516927035263,
    0.9170040432046711, 0.9219832844793128, 0.9269895625416926, 0.9320230241988943,
    0.9370838170551498, 0.9421720895161669, 0.9472879907934827, 0.9524316709088368,
    0.9576032806985735, 0.9628029718180622, 0.9680308967461471, 0.9732872087896164,
    0.9785720620876999, 0.9838856116165875, 0.9892280131939752, 0.9945994234836328,
    // Schema 8.
    0.5, 0.5013556375251013, 0.5027149505564014, 0.5040779490592088,
    0.5054446430258502, 0.5068150424757447, 0.5081891574554764, 0.509566998038869,
    0.5109485743270583, 0.5123338964485679, 0.5137229745593818, 0.5151158188430205,
    0.5165124395106142, 0.5179128468009786, 0.5193170509806894, 0.520725062344158,
    0.5221368912137069, 0.5235525479396449, 0.5249720429003435, 0.526395386502313,
    0.5278225891802786, 0.5292536613972564, 0.5306886136446309, 0.5321274564422321,
    0.5335702003384117, 0.5350168559101208, 0.5364674337629877, 0.5379219445313954,
    0.5393803988785598, 0.5408428074966075, 0.5423091811066545, 0.5437795304588847,
    0.5452538663326288, 0.5467321995364429, 0.5482145409081883, 0.549700901315111,
    0.5511912916539204, 0.5526857228508706, 0.5541842058618393, 0.5556867516724088,
    0.5571933712979462, 0.5587040757836845, 0.5602188762048033, 0.5617377836665098,
    0.5632608093041209, 0.564787964283144, 0.5663192597993595, 0.5678547070789026,
    0.5693943173783458, 0.5709381019847808, 0.572486072215902, 0.5740382394200894,
    0.5755946149764913, 0.5771552102951081, 0.5787200368168754, 0.5802891060137493,
    0.5818624293887887, 0.5834400184762408, 0.585021884841625, 0.5866080400818185,
    0.5881984958251406, 0.5897932637314379, 0.5913923554921704, 0.5929957828304968,
    0.5946035575013605, 0.5962156912915756, 0.5978321960199137, 0.5994530835371903,
    0.6010783657263515, 0.6027080545025619, 0.6043421618132907, 0.6059806996384005,
    0.6076236799902344, 0.6092711149137041, 0.6109230164863786, 0.6125793968185725,
    0.6142402680534349, 0.6159056423670379, 0.6175755319684665, 0.6192499490999082,
    0.620928906036742, 0.622612415087629, 0.6243004885946023, 0.6259931389331581,
    0.6276903785123455, 0.6293922197748583, 0.6310986751971253, 0.6328097572894031,
    0.6345254785958666, 0.6362458516947014, 0.637970889198196, 0.6397006037528346,
    0.6414350080393891, 0.6431741147730128, 0.6449179367033329, 0.6466664866145447,
    0.6484197773255048, 0.6501778216898253, 0.6519406325959679, 0.6537082229673385,
    0.6554806057623822, 0.6572577939746774, 0.659039800633032, 0.6608266388015788,
    0.6626183215798706, 0.6644148621029772, 0.6662162735415805, 0.6680225691020727,
    0.6698337620266515, 0.6716498655934177, 0.6734708931164728, 0.6752968579460171,
    0.6771277734684463, 0.6789636531064505, 0.6808045103191123, 0.6826503586020058,
    0.6845012114872953, 0.6863570825438342, 0.688217985377265, 0.690083933630119,
    0.6919549409819159, 0.6938310211492645, 0.6957121878859629, 0.6975984549830999,
    0.6994898362691555, 0.7013863456101023, 0.7032879969095076, 0.7051948041086352,
    0.7071067811865475, 0.7090239421602076, 0.7109463010845827, 0.7128738720527471,
    0.7148066691959849, 0.7167447066838943, 0.718687998724491, 0.7206365595643126,
    0.7225904034885232, 0.7245495448210174, 0.7265139979245261, 0.7284837772007218,
    0.7304588970903234, 0.7324393720732029, 0.7344252166684908, 0.7364164454346837,
    0.7384130729697496, 0.7404151139112358, 0.7424225829363761, 0.7444354947621984,
    0.7464538641456323, 0.7484777058836176, 0.7505070348132126, 0.7525418658117031,
    0.7545822137967112, 0.7566280937263048, 0.7586795205991071, 0.7607365094544071,
    0.762799075372269, 0.7648672334736434, 0.7669409989204777, 0.7690203869158282,
    0.7711054127039704, 0.7731960915705107, 0.7752924388424999, 0.7773944698885442,
    0.7795022001189185, 0.7816156449856788, 0.7837348199827764, 0.7858597406461707,
    0.7879904225539431, 0.7901268813264122, 0.7922691326262467, 0.7944171921585818,
    0.7965710756711334, 0.7987307989543135, 0.8008963778413465, 0.8030678282083853,
    0.805245165974627, 0.8074284071024302, 0.8096175675974316, 0.8118126635086642,
    0.8140137109286738, 0.8162207259936375, 0.8184337248834821, 0.820652723822003,
    0.8228777390769823, 0.8251087869603088, 0.8273458838280969, 0.8295890460808079,
    0.8318382901633681, 0.8340936325652911, 0.8363550898207981, 0.8386226785089391,
    0.8408964152537144, 0.8431763167241966, 0.8454623996346523, 0.8477546807446661,
    0.8500531768592616, 0.8523579048290255, 0.8546688815502312, 0.8569861239649629,
    0.8593096490612387, 0.8616394738731368, 0.8639756154809185, 0.8663180910111553,
    0.8686669176368529, 0.871022112577578, 0.8733836930995842, 0.8757516765159389,
    0.8781260801866495, 0.8805069215187917, 0.8828942179666361, 0.8852879870317771,
    0.8876882462632604, 0.890095013257712, 0.8925083056594671, 0.8949281411607002,
    0.8973545375015533, 0.8997875124702672, 0.9022270839033115, 0.9046732696855155,
    0.9071260877501991, 0.909585556079304, 0.9120516927035263, 0.9145245157024483,
    0.9170040432046711, 0.9194902933879467, 0.9219832844793128, 0.9244830347552253,
    0.9269895625416926, 0.92950288621441, 0.9320230241988943, 0.9345499949706191,
    0.9370838170551498, 0.93962450902828, 0.9421720895161669, 0.9447265771954693,
    0.9472879907934827, 0.9498563490882775, 0.9524316709088368, 0.9550139751351947,
    0.9576032806985735, 0.9601996065815236, 0.9628029718180622, 0.9654133954938133,
    0.9680308967461471, 0.9706554947643201, 0.9732872087896164, 0.9759260581154889,
    0.9785720620876999, 0.9812252401044634, 0.9838856116165875, 0.9865531961276168,
    0.9892280131939752, 0.9919100824251095, 0.9945994234836328, 0.9972960560854698,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(schema: i32, positive: &[(i32, f64)]) -> FloatHistogram {
        FloatHistogram {
            schema,
            count: positive.iter().map(|(_, c)| c).sum(),
            sum: 10.0,
            positive: positive.to_vec(),
            ..FloatHistogram::default()
        }
    }

    #[test]
    fn integer_deltas_become_absolute_counts_at_their_span_indexes() {
        let native = NativeHistogram {
            timestamp_ms: 0,
            schema: 1,
            zero_threshold: 0.001,
            sum: 7.5,
            reset_hint: ResetHint::No,
            counts: HistogramCounts::Integer {
                count: 9,
                zero_count: 1,
                positive_deltas: vec![1, 2, -1],
                negative_deltas: vec![2],
            },
            positive_spans: vec![
                BucketSpan {
                    offset: -1,
                    length: 2,
                },
                BucketSpan {
                    offset: 2,
                    length: 1,
                },
            ],
            negative_spans: vec![BucketSpan {
                offset: 4,
                length: 1,
            }],
        };
        let h = FloatHistogram::from_native(&native);
        assert_eq!(h.positive, vec![(-1, 1.0), (0, 3.0), (3, 2.0)]);
        assert_eq!(h.negative, vec![(4, 2.0)]);
        assert_eq!((h.count, h.zero_count, h.sum), (9.0, 1.0, 7.5));
        assert_eq!(h.counter_reset, ResetHint::No);
    }

    #[test]
    fn bounds_are_prometheus_s_including_the_last_finite_bucket() {
        assert_eq!(bucket_bound(0, 0), 1.0);
        assert_eq!(bucket_bound(1, 0), 2.0);
        assert_eq!(bucket_bound(-1, 0), 0.5);
        assert_eq!(bucket_bound(1, -1), 4.0);
        assert_eq!(bucket_bound(-1, -1), 0.25);
        assert_eq!(bucket_bound(1, -4), 65536.0);
        assert_eq!(bucket_bound(512, -1), f64::MAX);
        assert_eq!(bucket_bound(513, -1), f64::INFINITY);
        assert_eq!(bucket_bound(1024, 0), f64::MAX);
        assert_eq!(bucket_bound(1025, 0), f64::INFINITY);
        assert_eq!(bucket_bound(1, 2), 1.189207115002721);
        assert_eq!(bucket_bound(-1, 2), 0.8408964152537144);
        assert_eq!(bucket_bound(-8, 3), 0.5);
        // Far below the smallest float, far above the largest: no overflow on the way.
        assert_eq!(bucket_bound(i32::MIN, 8), 0.0);
        assert_eq!(bucket_bound(i32::MAX, -4), f64::INFINITY);
        // Every entry of the table is in [0.5, 1) and rises within its schema.
        for schema in 0..=8 {
            let n = 1 << schema;
            let row = &EXPONENTIAL_BOUNDS[n - 1..2 * n - 1];
            assert_eq!(row[0], 0.5);
            assert!(row.windows(2).all(|w| w[0] < w[1] && w[1] < 1.0));
            // Each close to 2^(i/n - 1), as the formula says.
            for (i, bound) in row.iter().enumerate() {
                let exact = (i as f64 / n as f64 - 1.0).exp2();
                assert!((bound - exact).abs() < 4.0 * f64::EPSILON, "{schema} {i}");
            }
        }
    }

    #[test]
    fn adding_a_finer_histogram_merges_its_buckets_into_the_coarser_layout() {
        // Schema 1 buckets 1, 2, 3 fall into schema 0 buckets 1, 1, 2.
        let mut coarse = histogram(0, &[(0, 1.0), (2, 4.0)]);
        let fine = histogram(1, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
        coarse.add(&fine);
        assert_eq!(coarse.schema, 0);
        assert_eq!(coarse.positive, vec![(0, 1.0), (1, 3.0), (2, 7.0)]);
        assert_eq!(coarse.count, 11.0);
        assert_eq!(coarse.sum, 20.0);
        // The other way round gives the same: the result takes the lower resolution.
        let mut fine = histogram(1, &[(1, 1.0), (2, 2.0), (3, 3.0)]);
        fine.add(&histogram(0, &[(0, 1.0), (2, 4.0)]));
        assert_eq!(fine.schema, 0);
        assert_eq!(fine.positive, vec![(0, 1.0), (1, 3.0), (2, 7.0)]);
    }

    #[test]
    fn subtraction_keeps_emptied_buckets_until_compacted() {
        let mut later = histogram(0, &[(0, 5.0), (1, 2.0)]);
        later.sub(&histogram(0, &[(0, 5.0), (3, 1.0)]));
        assert_eq!(later.positive, vec![(0, 0.0), (1, 2.0), (3, -1.0)]);
        later.compact();
        assert_eq!(later.positive, vec![(1, 2.0), (3, -1.0)]);
    }

    #[test]
    fn a_wider_zero_bucket_swallows_the_buckets_it_covers() {
        // Zero bucket [-0.5, 0.5] with 2; bucket 0 is (0.5, 1] with 3.
        let mut narrow = histogram(0, &[(0, 3.0), (1, 1.0)]);
        narrow.zero_threshold = 0.5;
        narrow.zero_count = 2.0;
        narrow.count = 6.0;
        // 0.7 falls inside the populated bucket (0.5, 1], so the common threshold is 1.
        let mut wide = histogram(0, &[(1, 4.0)]);
        wide.zero_threshold = 0.7;
        wide.zero_count = 1.0;
        wide.count = 5.0;
        narrow.add(&wide);
        assert_eq!(narrow.zero_threshold, 1.0);
        assert_eq!(narrow.zero_count, 2.0 + 3.0 + 1.0);
        assert_eq!(narrow.positive, vec![(1, 5.0)]);
        assert_eq!(narrow.count, 11.0);
    }

    #[test]
    fn resets_are_seen_in_any_count_that_fell_or_any_populated_bucket_gone() {
        let before = histogram(0, &[(0, 2.0), (1, 3.0)]);
        assert!(!histogram(0, &[(0, 2.0), (1, 4.0)]).detect_reset(&before));
        assert!(!histogram(0, &[(0, 2.0), (1, 3.0), (2, 1.0)]).detect_reset(&before));
        assert!(histogram(0, &[(0, 1.0), (1, 5.0)]).detect_reset(&before));
        assert!(histogram(0, &[(1, 6.0)]).detect_reset(&before));
        // An empty bucket may go away.
        let with_empty = histogram(0, &[(0, 2.0), (1, 3.0), (5, 0.0)]);
        assert!(!histogram(0, &[(0, 2.0), (1, 3.0)]).detect_reset(&with_empty));
        // A rise in resolution is only possible through a reset; a fall is not a reset.
        assert!(histogram(1, &[(1, 2.0), (2, 3.0)]).detect_reset(&before));
        let fine_before = histogram(1, &[(1, 1.0), (2, 1.0), (3, 3.0)]);
        assert!(!histogram(0, &[(1, 2.0), (2, 3.0)]).detect_reset(&fine_before));
        // A lower total count is a reset even when the buckets rose.
        let mut fewer = histogram(0, &[(0, 2.0), (1, 3.0)]);
        fewer.count = 4.0;
        assert!(fewer.detect_reset(&before));
    }

    #[test]
    fn all_buckets_run_from_the_lowest_to_the_highest_ending_at_the_zero_bucket() {
        let h = FloatHistogram {
            schema: 0,
            zero_threshold: 0.75,
            zero_count: 1.0,
            count: 7.0,
            positive: vec![(0, 2.0), (2, 1.0)],
            negative: vec![(0, 3.0)],
            ..FloatHistogram::default()
        };
        let bounds: Vec<(f64, f64, bool, bool, f64)> = h
            .all_buckets()
            .into_iter()
            .map(|b| {
                (
                    b.lower,
                    b.upper,
                    b.lower_inclusive,
                    b.upper_inclusive,
                    b.count,
                )
            })
            .collect();
        assert_eq!(
            bounds,
            vec![
                (-1.0, -0.75, true, false, 3.0),
                (-0.75, 0.75, true, true, 1.0),
                (0.75, 1.0, false, true, 2.0),
                (2.0, 4.0, false, true, 1.0),
            ]
        );
        // An empty zero bucket is left out.
        let no_zero = FloatHistogram {
            zero_count: 0.0,
            ..h
        };
        assert_eq!(no_zero.all_buckets().len(), 3);
    }

    #[test]
    fn copying_to_a_lower_schema_merges_and_keeps_the_totals() {
        let h = histogram(2, &[(-3, 1.0), (0, 1.0), (1, 2.0), (4, 3.0), (5, 4.0)]);
        let copy = h.copy_to_schema(0);
        // Schema 2 index i lands in schema 0 index ((i - 1) >> 2) + 1.
        assert_eq!(copy.positive, vec![(0, 2.0), (1, 5.0), (2, 4.0)]);
        assert_eq!((copy.schema, copy.count, copy.sum), (0, h.count, h.sum));
        let mut scaled = copy.clone();
        scaled.scale(0.5);
        assert_eq!(scaled.positive, vec![(0, 1.0), (1, 2.5), (2, 2.0)]);
        assert_eq!(scaled.count, copy.count / 2.0);
    }

    #[test]
    fn the_stale_marker_is_a_stale_sum() {
        let mut h = histogram(0, &[(0, 1.0)]);
        assert!(!h.is_stale());
        h.sum = crate::stale_nan();
        assert!(h.is_stale());
        h.sum = f64::NAN;
        assert!(!h.is_stale());
    }
}
