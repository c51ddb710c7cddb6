//! A Zipf sampler over ranks `0..n`: rank `r` is drawn with probability proportional to
//! `1 / (r + 1)^s`. `s = 0` is uniform; `s ≈ 1` is the classic "a few items get most of the
//! traffic" of a catalogue sale.
//!
//! The cumulative distribution is tabulated once (8 bytes per rank; scenarios are bounded by
//! the engine's SKU table) and shared by every connection; a draw is one uniform number and a
//! binary search, exact for any `s`.

use rand::{Rng, RngExt};

#[derive(Debug, Clone)]
pub struct Zipf {
    /// `cumulative[r]` = P(rank <= r); the last entry is exactly 1.
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("a Zipf distribution needs at least one item".into());
        }
        if !(exponent.is_finite() && exponent >= 0.0) {
            return Err(format!(
                "the Zipf exponent must be a finite number >= 0, got {exponent}"
            ));
        }
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(exponent);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        *cumulative.last_mut().expect("n >= 1") = 1.0;
        Ok(Self { cumulative })
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// Probability of `rank`.
    pub fn probability(&self, rank: usize) -> f64 {
        let below = if rank == 0 {
            0.0
        } else {
            self.cumulative[rank - 1]
        };
        self.cumulative[rank] - below
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        // The first rank whose cumulative probability exceeds u.
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn zipf_draws_match_the_distribution() {
        let n = 100;
        let zipf = Zipf::new(n, 1.0).unwrap();
        let harmonic: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
        assert!((zipf.probability(0) - 1.0 / harmonic).abs() < 1e-12);

        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 400_000;
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // Each of the top ranks within 5% of its expected share.
        for (rank, &count) in counts.iter().enumerate().take(10) {
            let expected = zipf.probability(rank) * draws as f64;
            let error = (count as f64 - expected).abs() / expected;
            assert!(
                error < 0.05,
                "rank {rank}: {count} draws, expected {expected:.0}"
            );
        }
        // Rank 1 is drawn about twice as often as rank 2 when s = 1.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.9..2.1).contains(&ratio), "ratio {ratio}");
        // A chi-square goodness of fit over all ranks, far below the 99.9% critical value of
        // about 149 for 99 degrees of freedom.
        let chi_square: f64 = counts
            .iter()
            .enumerate()
            .map(|(rank, &count)| {
                let expected = zipf.probability(rank) * draws as f64;
                (count as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi_square < 149.0, "chi-square {chi_square}");
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let zipf = Zipf::new(4, 0.0).unwrap();
        for rank in 0..4 {
            assert!((zipf.probability(rank) - 0.25).abs() < 1e-12);
        }
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_single_item_is_always_drawn() {
        let zipf = Zipf::new(1, 1.2).unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        assert!((0..1000).all(|_| zipf.sample(&mut rng) == 0));
    }

    #[test]
    fn zipf_refuses_no_items_and_negative_exponents() {
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(5, -1.0).is_err());
        assert!(Zipf::new(5, f64::INFINITY).is_err());
    }
}
