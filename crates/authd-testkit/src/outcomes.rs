//! [`Codes`]: the outcomes of many calls, counted by status code, for the tests of throttles and
//! rate limits (which fire concurrently and are judged by how many calls got through).

use std::collections::BTreeMap;

use tonic::{Code, Status};

/// Outcomes counted by status code (a success counts as `Code::Ok`). Adding a
/// RESOURCE_EXHAUSTED reply asserts that it carries `retry-after`, the contract of every throttle.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Codes(BTreeMap<String, usize>);

impl Codes {
    /// The counts of `results`.
    pub fn of<T>(results: impl IntoIterator<Item = Result<T, Status>>) -> Self {
        let mut codes = Self::default();
        for r in results {
            codes.add(&r);
        }
        codes
    }

    /// Counts one outcome.
    pub fn add<T>(&mut self, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => Code::Ok,
            Err(s) => {
                if s.code() == Code::ResourceExhausted {
                    assert!(
                        s.metadata().get("retry-after").is_some(),
                        "a throttled reply carries retry-after: {s:?}"
                    );
                }
                s.code()
            }
        };
        *self.0.entry(format!("{code:?}")).or_insert(0) += 1;
    }

    /// How many outcomes had `code`.
    pub fn count(&self, code: Code) -> usize {
        self.0.get(&format!("{code:?}")).copied().unwrap_or(0)
    }

    /// The number of outcomes.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}
