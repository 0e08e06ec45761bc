//! The states of an import and of a task, and the rule that decides an
//! import's final state from its counts and failures (contract §3). The
//! SQL helpers store and read the states; what they mean lives here.

use std::fmt::{self, Write as _};

use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::contract::{ImportRequest, Source};

/// Defines a state enum kept as text in Postgres.
macro_rules! text_state {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal, final = $final:literal;)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Whether nothing moves it any more (but `tetherctl requeue`).
            pub fn is_final(self) -> bool {
                match self {
                    $($name::$variant => $final,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut bytes::BytesMut,
            ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as FromSql>::from_sql(ty, raw)?;
                Self::parse(text)
                    .ok_or_else(|| format!("{text:?} is not a {}", stringify!($name)).into())
            }

            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    };
}

text_state! {
    /// `tether.import_status.state` (contract §3).
    ImportState {
        Queued = "queued", final = false;
        Running = "running", final = false;
        Succeeded = "succeeded", final = true;
        PartiallySucceeded = "partially_succeeded", final = true;
        Failed = "failed", final = true;
        Cancelled = "cancelled", final = true;
    }
}

text_state! {
    /// `tether.tasks.state`: Tether's own.
    TaskState {
        Pending = "pending", final = false;
        Done = "done", final = true;
        Failed = "failed", final = true;
        Cancelled = "cancelled", final = true;
    }
}

/// Everything an import's final state depends on.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub listed: i64,
    pub filtered: i64,
    pub failed: i64,
    /// Set when the import as a whole could not run.
    pub import_error: Option<String>,
    /// (source_url, message) of each prefix whose listing failed.
    pub prefix_failures: Vec<(String, String)>,
    /// (code, count) of the failed objects, most frequent first.
    pub object_failures: Vec<(String, i64)>,
}

impl Tally {
    /// The final state and the sentence for `error` (contract §3).
    pub fn decide(&self, request: &ImportRequest) -> (ImportState, Option<String>) {
        if let Some(error) = &self.import_error {
            return (ImportState::Failed, Some(error.clone()));
        }
        let matched = self.listed - self.filtered;
        let where_ = describe_prefixes(&request.source, &request.prefixes);
        if !self.prefix_failures.is_empty() && matched == 0 {
            let (url, message) = &self.prefix_failures[0];
            return (ImportState::Failed, Some(format!("Tether could not list {url}: {message}")));
        }
        if self.listed == 0 {
            return (
                ImportState::Failed,
                Some(format!("Nothing was found under {where_}: check the bucket name and the prefixes.")),
            );
        }
        if matched == 0 {
            return (
                ImportState::Failed,
                Some(format!(
                    "None of the {} objects under {where_} matched the filter: check filter.extensions (use [\"*\"] for every object).",
                    self.listed
                )),
            );
        }
        if self.failed == matched {
            return (ImportState::Failed, Some(format!("Every matching object failed ({}).", self.codes())));
        }
        if self.failed > 0 || !self.prefix_failures.is_empty() {
            let mut error = String::new();
            if self.failed > 0 {
                let _ =
                    write!(error, "{} of {matched} matching objects failed ({})", self.failed, self.codes());
            }
            if let Some((url, message)) = self.prefix_failures.first() {
                if !error.is_empty() {
                    error.push_str("; ");
                }
                let _ = write!(
                    error,
                    "{} prefix(es) could not be listed, first {url}: {message}",
                    self.prefix_failures.len()
                );
            }
            error.push_str(". See tether.import_failures, fix the cause and requeue the import.");
            return (ImportState::PartiallySucceeded, Some(error));
        }
        (ImportState::Succeeded, None)
    }

    fn codes(&self) -> String {
        self.object_failures.iter().map(|(code, n)| format!("{code}: {n}")).collect::<Vec<_>>().join(", ")
    }
}

fn describe_prefixes(source: &Source, prefixes: &[String]) -> String {
    let mut urls: Vec<String> = prefixes.iter().take(3).map(|p| source.url(p)).collect();
    if prefixes.len() > 3 {
        urls.push(format!("and {} more prefixes", prefixes.len() - 3));
    }
    urls.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{parse_request, ValidationOptions};

    fn request() -> ImportRequest {
        let body = br#"{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"w","dataset_id":"d","mode":"link",
          "source":{"provider":"s3","bucket":"acme-images","prefixes":["a/"],"role_arn":"arn:aws:iam::111122223333:role/r","external_id":"ext-1"}}"#;
        parse_request(body, Some("application/json"), ValidationOptions::default()).expect("valid").request
    }

    #[test]
    fn states_round_trip_and_know_whether_they_are_final() {
        for state in ImportState::ALL {
            assert_eq!(ImportState::parse(state.as_str()), Some(*state));
        }
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(*state));
        }
        assert!(!ImportState::Running.is_final() && ImportState::Cancelled.is_final());
        assert!(!TaskState::Pending.is_final() && TaskState::Failed.is_final());
        assert_eq!(ImportState::parse("done"), None);
    }

    #[test]
    fn decide_follows_contract_section_3() {
        let prefix = || vec![("s3://acme-images/a/".to_owned(), "denied".to_owned())];
        let codes = || vec![("unsupported_key".to_owned(), 1)];
        let cases: Vec<(&str, Tally, ImportState, Option<&str>)> = vec![
            ("all imported", Tally { listed: 3, ..Tally::default() }, ImportState::Succeeded, None),
            (
                "import error",
                Tally { listed: 3, import_error: Some("refused".into()), ..Tally::default() },
                ImportState::Failed,
                Some("refused"),
            ),
            ("nothing listed", Tally::default(), ImportState::Failed, Some("Nothing was found")),
            (
                "all filtered",
                Tally { listed: 2, filtered: 2, ..Tally::default() },
                ImportState::Failed,
                Some("matched the filter"),
            ),
            (
                "every prefix failed",
                Tally { prefix_failures: prefix(), ..Tally::default() },
                ImportState::Failed,
                Some("could not list"),
            ),
            (
                "every object failed",
                Tally { listed: 2, failed: 2, object_failures: codes(), ..Tally::default() },
                ImportState::Failed,
                Some("Every matching object failed"),
            ),
            (
                "some objects failed",
                Tally { listed: 3, failed: 1, object_failures: codes(), ..Tally::default() },
                ImportState::PartiallySucceeded,
                Some("1 of 3 matching objects failed (unsupported_key: 1)"),
            ),
            (
                "a prefix failed, others imported",
                Tally { listed: 3, prefix_failures: prefix(), ..Tally::default() },
                ImportState::PartiallySucceeded,
                Some("1 prefix(es) could not be listed"),
            ),
            (
                "unchanged objects count as skipped",
                Tally { listed: 3, filtered: 1, ..Tally::default() },
                ImportState::Succeeded,
                None,
            ),
        ];
        for (name, tally, state, error) in cases {
            let (decided, sentence) = tally.decide(&request());
            assert_eq!(decided, state, "{name}");
            match error {
                None => assert_eq!(sentence, None, "{name}"),
                Some(words) => {
                    assert!(sentence.as_deref().unwrap_or_default().contains(words), "{name}: {sentence:?}")
                }
            }
        }
    }
}
