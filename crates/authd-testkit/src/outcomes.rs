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

/// Runs `futs` concurrently, interleaved in the calling task (so borrowed clients and servers need
/// no `'static`), and returns their outputs in order. The tests of "exactly one of 20 concurrent
/// callers wins" use it.
pub async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
