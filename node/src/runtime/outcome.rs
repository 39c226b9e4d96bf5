//! What a worker's end means for its attempt: its status, exit code, output and own report
//! classified as the event that ends the attempt, or as finished work for the verification
//! gate. Pure (the clock is given), so a table of cases tests it.

use std::time::Duration;

use ccm_schema::{AgentStatus, FailureClass, TaskEvent, Timestamp};

use crate::agents::parse::{
    last_text_line, ExitMeaning, Outcome, OutputFormat, OutputSummary, Quota,
};

/// A worker that is gone, as the runtime found it.
pub(super) struct WorkerEnd<'a> {
    pub status: AgentStatus,
    pub exit_code: Option<i64>,
    /// The output format of its CLI: some exit statuses mean something for some CLIs.
    pub format: OutputFormat,
    /// What its output says (its own report of success or error, a usage limit).
    pub summary: &'a OutputSummary,
    /// Everything it printed: its last text line is the cause of a failure.
    pub output: &'a str,
    /// Its profile, and that profile's program (named when it cannot be started).
    pub profile: &'a str,
    pub program: Option<&'a str>,
}

/// What the worker's end means.
#[derive(Debug, PartialEq)]
pub(super) enum Classified {
    /// The attempt ends here: its outcome, the event to apply and why.
    Ends { outcome: &'static str, event: TaskEvent, reason: String },
    /// The worker did its work: on to the verification gate.
    Finished,
}

/// Classifies the worker's end. A fatal exit status (nothing a retry fixes) comes first, then
/// a usage limit (from the output or the exit status), then any other failure.
pub(super) fn classify(end: &WorkerEnd, now: Timestamp) -> Classified {
    let meaning = end.exit_code.filter(|_| end.status == AgentStatus::Exited);
    let meaning = meaning.and_then(|code| end.format.exit_meaning(code));
    let cause = || last_text_line(end.output);
    let crash = |class, reason| Classified::Ends {
        outcome: "crash",
        event: TaskEvent::Failed { class },
        reason,
    };
    if let Some(ExitMeaning::Fatal(what)) = meaning {
        let code = end.exit_code.unwrap_or(-1);
        let what = match end.program.filter(|_| matches!(code, 126 | 127)) {
            Some(program) => format!(
                "{what}: `{program}` of profile {}; is it installed and on the daemon's PATH? `ccm doctor` checks",
                end.profile
            ),
            None => what.to_string(),
        };
        let reason = match cause() {
            Some(cause) => format!("worker exited with status {code} ({what}): {cause}"),
            None => format!("worker exited with status {code} ({what})"),
        };
        return crash(FailureClass::Fatal, reason);
    }
    // The exit status says "quota" even when the output does not.
    let quota = end.summary.quota.clone().or_else(|| {
        (meaning == Some(ExitMeaning::Quota)).then(|| Quota {
            message: cause().unwrap_or_else(|| "quota exhausted".to_string()),
            reset_at: None,
            retry_after_secs: None,
        })
    });
    if let Some(quota) = quota {
        return Classified::Ends {
            outcome: "quota",
            event: TaskEvent::QuotaExhausted { until: quota_until(&quota, now) },
            reason: format!("usage limit: {}", quota.message),
        };
    }
    let failure = match (end.status, end.exit_code, &end.summary.outcome) {
        (AgentStatus::Exited, Some(0), None | Some(Outcome::Success)) => {
            return Classified::Finished
        }
        (AgentStatus::Exited, Some(0), Some(Outcome::Error { message })) => {
            format!("worker reported an error: {message}")
        }
        (AgentStatus::Exited, code, _) => {
            format!("worker exited with status {}", code.unwrap_or(-1))
        }
        (AgentStatus::Killed, ..) => "worker was stopped".to_string(),
        _ => "worker vanished without an exit status (crashed or killed from outside)".to_string(),
    };
    crash(FailureClass::Crash, failure)
}

/// When a usage limit resets: its reset time, else `now` plus its retry-after, if it says.
pub(super) fn quota_until(quota: &Quota, now: Timestamp) -> Option<Timestamp> {
    quota
        .reset_at
        .map(|secs| Timestamp(secs.saturating_mul(1000)))
        .or_else(|| quota.retry_after_secs.map(|secs| now.after(Duration::from_secs(secs))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(message: &str, reset_at: Option<i64>, retry_after_secs: Option<u64>) -> OutputSummary {
        let quota = Quota { message: message.to_string(), reset_at, retry_after_secs };
        OutputSummary { quota: Some(quota), ..OutputSummary::default() }
    }

    fn ends(outcome: &'static str, class: FailureClass, reason: &str) -> Classified {
        Classified::Ends { outcome, event: TaskEvent::Failed { class }, reason: reason.to_string() }
    }

    fn quota_ends(until: Option<Timestamp>, reason: &str) -> Classified {
        Classified::Ends {
            outcome: "quota",
            event: TaskEvent::QuotaExhausted { until },
            reason: reason.to_string(),
        }
    }

    /// A case: its name, the worker's status, exit code, output format, output summary and
    /// output, and what that means.
    type Case<'a> =
        (&'a str, AgentStatus, Option<i64>, OutputFormat, &'a OutputSummary, &'a str, Classified);

    #[test]
    fn a_workers_end_is_classified_by_status_exit_code_and_output() {
        use AgentStatus::{Exited, Killed, Lost};
        use FailureClass::{Crash, Fatal};
        use OutputFormat::{Claude, Gemini, Plain};
        let now = Timestamp(1_000_000);
        let nothing = OutputSummary::default();
        let success = OutputSummary { outcome: Some(Outcome::Success), ..OutputSummary::default() };
        let error = OutputSummary {
            outcome: Some(Outcome::Error { message: "tool failed".into() }),
            ..OutputSummary::default()
        };
        let retry_in_a_minute = quota("limit reached", None, Some(60));
        let resets = quota("limit reached", Some(5_000), Some(60));
        let not_found = "sh: 1: claude: not found\n";
        let json_only = "{\"type\":\"result\"}\n";
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("exit 0 is finished work", Exited, Some(0), Claude, &nothing, "", Classified::Finished),
            ("exit 0 with a success report", Exited, Some(0), Claude, &success, "", Classified::Finished),
            ("exit 0 with its own error report", Exited, Some(0), Claude, &error, "",
                ends("crash", Crash, "worker reported an error: tool failed")),
            ("a nonzero exit is a crash", Exited, Some(1), Claude, &success, "",
                ends("crash", Crash, "worker exited with status 1")),
            ("an exit with no code is a crash", Exited, None, Plain, &nothing, "",
                ends("crash", Crash, "worker exited with status -1")),
            ("a stopped worker", Killed, None, Claude, &nothing, "",
                ends("crash", Crash, "worker was stopped")),
            ("a vanished worker", Lost, None, Claude, &nothing, "",
                ends("crash", Crash, "worker vanished without an exit status (crashed or killed from outside)")),
            ("a missing program is fatal and named", Exited, Some(127), Claude, &nothing, not_found,
                ends("crash", Fatal, "worker exited with status 127 (its program was not found: `claude` of profile main; is it installed and on the daemon's PATH? `ccm doctor` checks): sh: 1: claude: not found")),
            ("a program that cannot run is fatal", Exited, Some(126), Plain, &nothing, json_only,
                ends("crash", Fatal, "worker exited with status 126 (its program cannot be executed: `claude` of profile main; is it installed and on the daemon's PATH? `ccm doctor` checks)")),
            ("gemini's own fatal status", Exited, Some(41), Gemini, &nothing, "",
                ends("crash", Fatal, "worker exited with status 41 (gemini cannot authenticate)")),
            ("status 41 means nothing from claude", Exited, Some(41), Claude, &nothing, "",
                ends("crash", Crash, "worker exited with status 41")),
            ("gemini's quota status", Exited, Some(173), Gemini, &nothing, "Quota exceeded\n",
                quota_ends(None, "usage limit: Quota exceeded")),
            ("gemini's quota status with no text", Exited, Some(173), Gemini, &nothing, "",
                quota_ends(None, "usage limit: quota exhausted")),
            ("a limit in the output, retry after", Exited, Some(1), Claude, &retry_in_a_minute, "",
                quota_ends(Some(Timestamp(1_060_000)), "usage limit: limit reached")),
            ("a limit's reset time beats its retry-after", Exited, Some(0), Claude, &resets, "",
                quota_ends(Some(Timestamp(5_000_000)), "usage limit: limit reached")),
            ("a limit ends even a stopped worker's attempt", Killed, None, Claude, &retry_in_a_minute, "",
                quota_ends(Some(Timestamp(1_060_000)), "usage limit: limit reached")),
        ];
        for (case, status, exit_code, format, summary, output, expected) in cases {
            let end = WorkerEnd {
                status,
                exit_code,
                format,
                summary,
                output,
                profile: "main",
                program: Some("claude"),
            };
            assert_eq!(classify(&end, now), expected, "{case}");
        }
    }
}
