//! Client transcripts: what a client script (`tests/python`, `tests/js`) writes step by step,
//! `{"step": name, "result": ...}` or `{"step": name, "error": {"type", "message"}}`, and the
//! checks of a run directly against Chroma beside a run through the proxy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// A transcript's path in the temp dir, removed when dropped.
pub struct TranscriptFile {
    pub path: PathBuf,
}

impl TranscriptFile {
    /// A path named after the test process and `label`.
    pub fn new(label: &str) -> TranscriptFile {
        let name = format!("chroma-shift-workflow-{}-{label}.json", std::process::id());
        TranscriptFile {
            path: std::env::temp_dir().join(name),
        }
    }

    /// The path as a script argument.
    pub fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The steps the script wrote.
    pub fn steps(&self) -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.path)?;
        Ok(serde_json::from_str(&text)?)
    }
}

impl Drop for TranscriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn step_name(step: &Value) -> &str {
    step["step"].as_str().unwrap_or("<unnamed>")
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The result of the step `name`.
pub fn result_of<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    let step = steps
        .iter()
        .find(|s| step_name(s) == name)
        .unwrap_or_else(|| panic!("the transcript has no step `{name}`"));
    &step["result"]
}

/// Step by step, so a failure names the first step that differs and shows both answers.
pub fn assert_same_transcripts(direct: &[Value], proxied: &[Value]) {
    for (index, (d, p)) in direct.iter().zip(proxied).enumerate() {
        assert_eq!(
            step_name(d),
            step_name(p),
            "step {index} has different names: the transcripts are out of step"
        );
        assert!(
            d == p,
            "step {index} `{}` differs\n--- direct Chroma\n{}\n--- through the proxy\n{}",
            step_name(d),
            pretty(d),
            pretty(p)
        );
    }
    assert_eq!(
        direct.len(),
        proxied.len(),
        "the transcripts have different lengths"
    );
}

/// At least `min_steps` steps; exactly the `expected` steps failed, with the expected error
/// types, and every other step has a result. Without this a proxy that broke everything the
/// same way twice would pass.
pub fn assert_expected_outcomes(steps: &[Value], expected: &[(&str, &str)], min_steps: usize) {
    assert!(
        steps.len() >= min_steps,
        "only {} steps in the transcript",
        steps.len()
    );
    let expected: BTreeMap<&str, &str> = expected.iter().copied().collect();
    for step in steps {
        let name = step_name(step);
        match (expected.get(name), step.get("error")) {
            (Some(kind), Some(error)) => assert_eq!(
                error["type"].as_str(),
                Some(*kind),
                "step `{name}` failed differently than expected: {error}"
            ),
            (Some(_), None) => panic!("step `{name}` should fail but gave {}", pretty(step)),
            (None, Some(error)) => panic!("step `{name}` failed: {}", pretty(error)),
            (None, None) => assert!(
                step.get("result").is_some(),
                "step `{name}` has neither result nor error: {step}"
            ),
        }
    }
    for name in expected.keys() {
        assert!(
            steps.iter().any(|s| step_name(s) == *name),
            "the transcript has no step `{name}`"
        );
    }
}
