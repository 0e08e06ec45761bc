//! What Tether keeps of a refused request (contract §2): a reason of at most
//! 1 KiB, and a copy of the body of at most 1 MiB; neither holds a secret.
//!
//! A reason travels in an AMQP header, and a header larger than the frame
//! size makes the broker close the whole connection: bounding it here keeps
//! one hostile value from silencing the scheduler.

/// The longest reason, in bytes of UTF-8.
pub const MAX_REASON_BYTES: usize = 1024;
/// The longest body kept in `tether.rejected`.
pub const MAX_KEPT_BODY_BYTES: usize = 1024 * 1024;
/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// The reason as Tether publishes and records it: secrets redacted, cut at a
/// character boundary to [`MAX_REASON_BYTES`].
pub fn bounded_reason(reason: &str) -> String {
    let redacted = redact_text(reason);
    if redacted.len() <= MAX_REASON_BYTES {
        return redacted;
    }
    let marker = "... (cut)";
    let mut end = MAX_REASON_BYTES - marker.len();
    while !redacted.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &redacted[..end])
}

/// The copy of a refused body kept in `tether.rejected`: a JSON body with
/// its `sas_token` values redacted (anywhere in it), any `sig=` value
/// redacted whether or not the body is JSON, cut to [`MAX_KEPT_BODY_BYTES`].
pub fn kept_body(body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(MAX_KEPT_BODY_BYTES)];
    let text = String::from_utf8_lossy(body);
    if !text.contains("sas_token") && !text.contains("sig=") {
        return body.to_vec(); // nothing to hide: the bytes as they came
    }
    let redacted = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut value) => {
            redact_sas_tokens(&mut value);
            value.to_string()
        }
        Err(_) => redact_sas_token_text(&text),
    };
    let mut out = redact_text(&redacted).into_bytes();
    out.truncate(MAX_KEPT_BODY_BYTES);
    out
}

fn redact_sas_tokens(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key == "sas_token" {
                    *item = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_sas_tokens(item);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_sas_tokens),
        _ => {}
    }
}

/// A body that is not JSON: the string after each `"sas_token"` key is
/// replaced up to its closing quote (or the end of the text).
fn redact_sas_token_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sas_token") {
        let (before, after) = rest.split_at(at + "sas_token".len());
        out.push_str(before);
        let value_start = after
            .char_indices()
            .find(|(_, c)| !matches!(c, '"' | ':' | ' ' | '\t' | '\r' | '\n'))
            .map_or(after.len(), |(i, _)| i);
        out.push_str(&after[..value_start]);
        let value = &after[value_start..];
        let end = value.find('"').unwrap_or(value.len());
        out.push_str(REDACTED);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the value of every `sig=` (a SAS or signed URL's signature) up to
/// the next `&`, quote, whitespace or end.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        let (before, after) = rest.split_at(at + "sig=".len());
        out.push_str(before);
        let end = after
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '\\' || c.is_whitespace())
            .unwrap_or(after.len());
        out.push_str(REDACTED);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let reason = format!("field `x` is \"{}\"", "é".repeat(100_000));
        let bounded = bounded_reason(&reason);
        assert!(bounded.len() <= MAX_REASON_BYTES, "{}", bounded.len());
        assert!(bounded.ends_with("(cut)"));
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn signatures_are_redacted_in_reasons_and_bodies() {
        assert_eq!(redact_text("a?sv=1&sig=SECRET%2B&sp=r"), "a?sv=1&sig=<redacted>&sp=r");
        assert_eq!(redact_text("sig=SECRET"), "sig=<redacted>");
        let body = br#"{"source":{"sas_token":"sv=2022&sp=rl&sig=SECRET","x":["sig=AB"]}}"#;
        let kept = String::from_utf8(kept_body(body)).expect("utf-8");
        assert!(!kept.contains("SECRET") && !kept.contains("AB\""), "{kept}");
        assert!(kept.contains(REDACTED));
    }

    #[test]
    fn a_sas_token_in_a_body_that_is_not_json_is_redacted() {
        let body = br#"{"source": {"sas_token": "sv=2022&sp=rl&sg=SECRET", oops"#;
        let kept = String::from_utf8(kept_body(body)).expect("utf-8");
        assert!(!kept.contains("SECRET"), "{kept}");
        assert!(kept.contains("oops"));
    }

    #[test]
    fn a_huge_body_is_cut() {
        let body = vec![b'x'; 3 * MAX_KEPT_BODY_BYTES];
        assert_eq!(kept_body(&body).len(), MAX_KEPT_BODY_BYTES);
    }
}
