//! Knobs a developer turns from the environment to replay or resize a test run: a number from
//! an environment variable, and a random seed that is printed so a failing run can be replayed.

/// The environment variable `name` parsed, or `default` when it is unset or not a `T`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed in the environment variable `name`, or a new one from the clock.
pub fn seed_from_env(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}
