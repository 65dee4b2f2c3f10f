//! Running a simulator scenario over many seeds: figures summarised, every
//! failing seed printed with the command that replays it alone.

use std::time::Instant;

/// Named figures one run produced (periods, counts, seconds).
pub type Figures = Vec<(&'static str, f64)>;

/// The seeds to run: `{PREFIX}_SEED` alone if set, else 1..=count (count
/// raised by `{PREFIX}_SEEDS` for a longer soak).
pub fn seeds(prefix: &str, count: u64) -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(format!("{prefix}_{name}"))
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    if let Some(seed) = var("SEED") {
        return vec![seed];
    }
    (1..=var("SEEDS").unwrap_or(count)).collect()
}

/// Runs `scenario` for every seed of `prefix` (see `seeds`); prints the
/// min/median/max/total of each figure and fails listing every bad seed
/// with `{PREFIX}_SEED=<seed> cargo test --test {suite} {test}`.
pub fn over_seeds(
    suite: &str,
    prefix: &str,
    test: &str,
    count: u64,
    scenario: impl Fn(u64) -> Result<Figures, String>,
) {
    let started = Instant::now();
    let mut figures: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut failures = Vec::new();
    let seeds = seeds(prefix, count);
    for &seed in &seeds {
        match scenario(seed) {
            Ok(run) => {
                for (name, value) in run {
                    match figures.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, values)) => values.push(value),
                        None => figures.push((name, vec![value])),
                    }
                }
            }
            Err(why) => failures.push(format!(
                "seed {seed}: {why}\n  replay: {prefix}_SEED={seed} cargo test --test {suite} {test}"
            )),
        }
    }
    eprintln!(
        "{test}: {}/{} seeds ok, wall {:.1} s",
        seeds.len() - failures.len(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    for (name, mut values) in figures {
        values.sort_by(f64::total_cmp);
        eprintln!(
            "  {name}: min {:.1} median {:.1} max {:.1} total {:.0}",
            values[0],
            values[values.len() / 2],
            values[values.len() - 1],
            values.iter().sum::<f64>()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
