//! The Azure Blob checks, in the contract's order: `sas_permissions`,
//! `sas_expiry`, `list`, `read`. No `cors`: Azure images are only ever
//! proxied (contract §8).
//!
//! The SAS token's fields are read from the token itself (`sp`, `se`, and
//! `srt`, `ss`, `sr`, `si` where present). Its signature is the secret: no
//! message quotes the token, only the meaning of its parameters.

use chrono::{DateTime, NaiveDate, Utc};
use percent_encoding::percent_decode_str;

use super::{list_and_read, Check, CheckRequest, Checker, Clock, Report};
use crate::contract::{AzureSource, Mode, Source};

const SAS_PERMISSIONS: &str = "sas_permissions";
const SAS_EXPIRY: &str = "sas_expiry";

/// An import may run up to 24 hours (contract §3).
const IMPORT_HOURS: i64 = 24;

/// The parameters of a SAS token a check reads, decoded.
#[derive(Debug, Default)]
struct SasFields {
    /// `sp`: permissions.
    permissions: Option<String>,
    /// `se`: expiry.
    expiry: Option<String>,
    /// `srt`: an account SAS's resource types (`s`, `c`, `o`).
    resource_types: Option<String>,
    /// `ss`: an account SAS's services (`b` for Blob).
    services: Option<String>,
    /// `sr`: a service SAS's resource (`c` container, `b` one blob).
    resource: Option<String>,
    /// `si`: a stored access policy, which may hold `sp` and `se` instead.
    policy: bool,
}

impl SasFields {
    fn parse(token: &str) -> Self {
        let mut fields = Self::default();
        for (name, value) in token.trim_start_matches('?').split('&').filter_map(|p| p.split_once('=')) {
            let value = || percent_decode_str(value).decode_utf8_lossy().into_owned();
            match name {
                "sp" => fields.permissions = Some(value()),
                "se" => fields.expiry = Some(value()),
                "srt" => fields.resource_types = Some(value()),
                "ss" => fields.services = Some(value()),
                "sr" => fields.resource = Some(value()),
                "si" => fields.policy = true,
                _ => {}
            }
        }
        fields
    }
}

/// What the token allows, as far as it says.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    list: bool,
    read: bool,
}

pub(super) async fn check(
    checker: &Checker,
    source: &AzureSource,
    request: &CheckRequest,
    clock: &Clock,
) -> Report {
    let Some(token) = &source.sas_token else {
        let why = "The source has no SAS token, so nothing was tried: add sas_token";
        let missing = Check::fail(
            SAS_PERMISSIONS,
            "The source has no SAS token: paste the container's SAS token with r and l permissions",
        );
        let skipped = |name| Check::skipped(name, why);
        return Report::new(
            None,
            vec![missing, skipped(SAS_EXPIRY), skipped(super::LIST), skipped(super::READ)],
        );
    };
    let sas = SasFields::parse(token.expose());
    let (permissions, allowed) = sas_permissions(&sas);
    let expiry = sas_expiry(&sas, request.mode, Utc::now());
    let [list, read] = if expiry.status == super::Status::Fail {
        let why = "The SAS token cannot be used, so the container was not tried: fix sas_expiry first";
        [Check::skipped(super::LIST, why), Check::skipped(super::READ, why)]
    } else if !allowed.list {
        let why = "The SAS token may not list, so the container was not listed: fix sas_permissions first";
        [Check::skipped(super::LIST, why), Check::skipped(super::READ, why)]
    } else {
        let no_read = (!allowed.read)
            .then_some("The SAS token may not read, so no blob was read: fix sas_permissions first");
        let container = checker.azure.open(source, token.clone());
        let whole = Source::Azure(source.clone());
        list_and_read(&container, "Azure Blob", &whole, &request.prefixes, no_read, clock).await
    };
    Report::new(None, vec![permissions, expiry, list, read])
}

/// The `sas_permissions` check: `r` and `l` in `sp`, and a token that
/// reaches a container's blobs at all.
fn sas_permissions(sas: &SasFields) -> (Check, Allowed) {
    let Some(sp) = &sas.permissions else {
        let allowed = Allowed { list: true, read: true };
        return if sas.policy {
            (
                Check::skipped(
                    SAS_PERMISSIONS,
                    "The SAS token takes its permissions from a stored access policy (si), which the token does not show: the list and read checks try them",
                ),
                allowed,
            )
        } else {
            (
                Check::fail(
                    SAS_PERMISSIONS,
                    "The SAS token has no permissions (sp): issue a new token whose permissions include r (read) and l (list)",
                ),
                Allowed { list: false, read: false },
            )
        };
    };
    let allowed = Allowed { list: sp.contains('l'), read: sp.contains('r') };
    let missing = match (allowed.read, allowed.list) {
        (true, true) => None,
        (true, false) => Some("l (list)"),
        (false, true) => Some("r (read)"),
        (false, false) => Some("r (read) and l (list)"),
    };
    let scope_problem = if sas.services.as_deref().is_some_and(|ss| !ss.contains('b')) {
        Some("is an account SAS whose services (ss) leave out b (Blob): issue one with ss including b")
    } else if sas.resource_types.as_deref().is_some_and(|srt| !(srt.contains('c') && srt.contains('o'))) {
        Some("is an account SAS whose resource types (srt) leave out c (container) or o (object): issue one with srt including c and o")
    } else if sas.resource.as_deref() == Some("b") {
        Some("is for one blob (sr=b): issue a container SAS (sr=c)")
    } else {
        None
    };
    let check = match (missing, scope_problem) {
        (Some(missing), _) => Check::fail(
            SAS_PERMISSIONS,
            format!("The SAS token lacks the {missing} permission: issue a new token whose permissions (sp) include r and l"),
        ),
        (None, Some(problem)) => Check::fail(SAS_PERMISSIONS, format!("The SAS token {problem}, with permissions r and l")),
        (None, None) => Check::pass(SAS_PERMISSIONS, "The SAS token allows reading (r) and listing (l)"),
    };
    let allowed = if scope_problem.is_some() { Allowed { list: false, read: false } } else { allowed };
    (check, allowed)
}

/// The `sas_expiry` check at `now`: expired fails; ending within an
/// import's 24 hours warns, and in link mode so does ending at all, since the
/// dataset's links stop working with the token.
fn sas_expiry(sas: &SasFields, mode: Mode, now: DateTime<Utc>) -> Check {
    let Some(se) = &sas.expiry else {
        return if sas.policy {
            Check::warn(
                SAS_EXPIRY,
                "The SAS token's expiry comes from its stored access policy (si), which the check cannot read: make sure that policy's expiry leaves the import 24 hours and, in link mode, lasts as long as the links must work",
            )
        } else {
            Check::fail(
                SAS_EXPIRY,
                "The SAS token has no expiry (se), so Azure refuses it: issue a new token",
            )
        };
    };
    let Some(expiry) = parse_expiry(se) else {
        return Check::fail(
            SAS_EXPIRY,
            "The SAS token's expiry (se) is not a date Azure reads: issue a new token",
        );
    };
    let at = expiry.format("%Y-%m-%d %H:%M UTC");
    let left = expiry - now;
    if left <= chrono::Duration::zero() {
        Check::fail(
            SAS_EXPIRY,
            format!("The SAS token expired at {at}: issue a new one with a later expiry (se) and send it with the request"),
        )
    } else if left < chrono::Duration::hours(IMPORT_HOURS) {
        Check::warn(
            SAS_EXPIRY,
            format!(
                "The SAS token expires at {at}, in {} hours, and an import may take up to {IMPORT_HOURS}: issue one with a later expiry (se)",
                left.num_hours()
            ),
        )
    } else if mode == Mode::Link {
        Check::warn(
            SAS_EXPIRY,
            format!(
                "The SAS token expires at {at}, in {} days, and the dataset's links stop working with it: re-import with a fresh token before then, or import in copy mode",
                left.num_days()
            ),
        )
    } else {
        Check::pass(SAS_EXPIRY, format!("The SAS token is valid until {at}, longer than an import takes"))
    }
}

/// `se` in the forms Azure accepts: a UTC date and time (with or without
/// seconds) or a date alone.
fn parse_expiry(se: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(se)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| chrono::NaiveDateTime::parse_from_str(se, "%Y-%m-%dT%H:%MZ").ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDate::parse_from_str(se, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Status;

    fn at(se: &str) -> DateTime<Utc> {
        parse_expiry(se).expect("a date")
    }

    #[test]
    fn expiry_is_read_in_every_form_azure_takes() {
        assert_eq!(at("2026-11-29T10:00:00Z"), at("2026-11-29T10:00Z"));
        assert_eq!(at("2026-11-29"), at("2026-11-29T00:00:00Z"));
        assert!(parse_expiry("tomorrow").is_none());
        let sas = SasFields::parse("sv=2022-11-02&sp=rl&se=2026-11-29T10%3A00%3A00Z&sig=abc%2B");
        assert_eq!(sas.expiry.as_deref(), Some("2026-11-29T10:00:00Z"));
    }

    #[test]
    fn expiry_fails_when_past_and_warns_when_near_or_in_link_mode() {
        let now = at("2026-11-29T10:00:00Z");
        let with = |se: &str| SasFields { expiry: Some(se.into()), ..SasFields::default() };
        assert_eq!(sas_expiry(&with("2026-11-29T09:00:00Z"), Mode::Copy, now).status, Status::Fail);
        assert_eq!(sas_expiry(&with("2026-11-29T20:00:00Z"), Mode::Copy, now).status, Status::Warn);
        assert_eq!(sas_expiry(&with("2026-12-29T10:00:00Z"), Mode::Copy, now).status, Status::Pass);
        let link = sas_expiry(&with("2026-12-29T10:00:00Z"), Mode::Link, now);
        assert_eq!(link.status, Status::Warn);
        assert!(link.message.contains("30 days"), "{}", link.message);
        assert_eq!(sas_expiry(&SasFields::default(), Mode::Copy, now).status, Status::Fail);
        let policy = SasFields { policy: true, ..SasFields::default() };
        assert_eq!(sas_expiry(&policy, Mode::Copy, now).status, Status::Warn);
    }

    #[test]
    fn permissions_need_r_and_l_on_a_container() {
        let status = |token: &str| sas_permissions(&SasFields::parse(token)).0.status;
        assert_eq!(status("sp=rl&sig=x"), Status::Pass);
        assert_eq!(status("ss=b&srt=sco&sp=racwdl&sig=x"), Status::Pass);
        assert_eq!(status("sp=r&sig=x"), Status::Fail);
        assert_eq!(status("sp=l&sig=x"), Status::Fail);
        assert_eq!(status("ss=b&srt=o&sp=rl&sig=x"), Status::Fail);
        assert_eq!(status("ss=q&srt=co&sp=rl&sig=x"), Status::Fail);
        assert_eq!(status("sr=b&sp=rl&sig=x"), Status::Fail);
        assert_eq!(status("si=policy1&sr=c&sig=x"), Status::Skipped);
        assert_eq!(status("sig=x"), Status::Fail);
        let message = sas_permissions(&SasFields::parse("sp=r&sig=secret")).0.message;
        assert!(message.contains("l (list)") && !message.contains("secret"), "{message}");
    }
}
