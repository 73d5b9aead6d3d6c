//! Failpoints at the awaits of the write path, for tests that stop or kill the proxy at the
//! worst moment (between the primary's answer and the journal commit, say).
//!
//! Compiled in only with the `failpoints` feature; then the `FAILPOINTS` environment variable
//! configures them at start (`FAILPOINTS="write::after_primary=pause"`, see the `fail` crate).
//! Without the feature [`failpoint`] is empty and [`setup`] does nothing.

/// Configures the failpoints from `FAILPOINTS`; keep the value alive while the process runs.
pub fn setup() -> Scenario {
    #[cfg(feature = "failpoints")]
    {
        Scenario(Some(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Scenario(None)
    }
}

/// Holds the failpoint configuration.
pub struct Scenario(Option<fail::FailScenario<'static>>);

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Scenario(failpoints)"
        } else {
            "Scenario(off)"
        })
    }
}

/// A named failpoint: whatever `FAILPOINTS` says for `name` (pause, panic, sleep ...).
#[inline]
pub(crate) fn failpoint(name: &str) {
    fail::fail_point!(name);
    let _ = name;
}
