//! Small charts as inline SVG, drawn on the server: bars (cost per day, per repository, queue
//! depth) and a task's state timeline as a strip. Colours come from CSS classes, so light and
//! dark themes apply.

use std::fmt::Write as _;

use ccm_schema::{TaskLogEntry, Timestamp};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Vertical bars with a label under each, a y axis from 0 to the largest value (`format`
/// writes its values), a title (tooltip) per bar, and the values as a list for screen readers
/// (the picture itself is one image to them).
pub fn bars(title: &str, bars: &[(String, f64, String)], format: impl Fn(f64) -> String) -> String {
    let (left, width, height, gap) = (44.0, 320.0, 120.0, 4.0);
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
    let n = bars.len().max(1) as f64;
    let bar_width = (width - left - gap * (n - 1.0)) / n;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {width} {}" role="img" aria-label="{}"><title>{}</title>"#,
        height + 16.0,
        escape(title),
        escape(title)
    );
    // The axes, with the top and the bottom of the scale.
    let _ = write!(
        svg,
        r#"<line class="axis-line" x1="{x:.1}" y1="2" x2="{x:.1}" y2="{height}"/><line class="axis-line" x1="{x:.1}" y1="{height}" x2="{width}" y2="{height}"/><text class="axis" x="{tx:.1}" y="10" text-anchor="end">{}</text><text class="axis" x="{tx:.1}" y="{height}" text-anchor="end">{}</text>"#,
        escape(&format(max)),
        escape(&format(0.0)),
        x = left - 2.0,
        tx = left - 5.0,
    );
    for (i, (label, value, tip)) in bars.iter().enumerate() {
        let h = if max > 0.0 { (value / max) * (height - 4.0) } else { 0.0 };
        let x = left + i as f64 * (bar_width + gap);
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{bar_width:.1}" height="{h:.1}"><title>{}</title></rect>"#,
            height - h,
            escape(tip)
        );
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x + bar_width / 2.0,
            height + 13.0,
            escape(label)
        );
    }
    svg.push_str("</svg><ul class=\"sr-only\">");
    for (_, _, tip) in bars {
        let _ = write!(svg, "<li>{}</li>", escape(tip));
    }
    svg.push_str("</ul>");
    svg
}

/// The most state changes a strip draws: the latest, from the first of them on.
pub const STRIP_CHANGES: usize = 100;

/// A task's states over time as one strip, a segment per state it was in.
pub fn state_strip(log: &[TaskLogEntry], now: Timestamp) -> String {
    // Bounded: a task retried a thousand times draws its last hundred changes.
    let log = &log[log.len().saturating_sub(STRIP_CHANGES)..];
    let Some(first) = log.first() else { return String::new() };
    let start = first.at.0;
    let end = now.0.max(start + 1);
    let span = (end - start) as f64;
    let mut svg = String::from(
        r#"<svg class="strip" viewBox="0 0 1000 24" preserveAspectRatio="none" role="img" aria-label="state timeline"><title>state timeline</title>"#,
    );
    for (i, entry) in log.iter().enumerate() {
        let from = entry.at.0;
        let to = log.get(i + 1).map_or(end, |next| next.at.0);
        let x = (from - start) as f64 / span * 1000.0;
        let w = ((to - from) as f64 / span * 1000.0).max(2.0);
        let _ = write!(
            svg,
            r#"<rect class="s-{}" x="{x:.1}" y="0" width="{w:.1}" height="24"><title>{} from {}</title></rect>"#,
            entry.to_state, entry.to_state, entry.at
        );
    }
    svg.push_str("</svg>");
    svg
}

/// How many tasks waited (`created` or `queued`) at the end of each of the last `hours` hours:
/// `waiting_now` less the net number that became waiting since (`changes`: `(hours ago, net)`
/// per hour, as [`Store::waiting_changes`](crate::store::Store::waiting_changes) counts them).
pub fn queue_depth(
    waiting_now: i64,
    changes: &[(i64, i64)],
    hours: i64,
) -> Vec<(String, f64, String)> {
    (0..hours)
        .rev()
        .map(|h| {
            let since: i64 = changes.iter().filter(|(ago, _)| *ago < h).map(|(_, net)| net).sum();
            let depth = (waiting_now - since).max(0);
            let label = if h == 0 { "now".to_string() } else { format!("-{h}h") };
            (label.clone(), depth as f64, format!("{depth} waiting at {label}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ccm_schema::{TaskLogEntry, TaskState, Timestamp};

    use super::{bars, queue_depth, state_strip, STRIP_CHANGES};

    #[test]
    fn queue_depth_replays_the_hourly_changes_backwards_from_now() {
        // Three became waiting in the last hour, two more an hour before, one left 5 hours ago.
        let depth = queue_depth(7, &[(0, 3), (1, 2), (5, -1)], 12);
        let at = |label: &str| depth.iter().find(|d| d.0 == label).map(|d| d.1);
        assert_eq!(at("now"), Some(7.0));
        assert_eq!(at("-1h"), Some(4.0));
        assert_eq!(at("-2h"), Some(2.0));
        assert_eq!(at("-6h"), Some(3.0));
        assert_eq!(depth.len(), 12);
    }

    #[test]
    fn the_state_strip_draws_at_most_its_bound_of_changes() {
        let log: Vec<TaskLogEntry> = (0..1000)
            .map(|i| TaskLogEntry {
                at: Timestamp(i * 1000),
                from_state: Some(TaskState::Retry),
                to_state: if i % 2 == 0 { TaskState::Executing } else { TaskState::Retry },
                reason: String::new(),
                actor: String::new(),
            })
            .collect();
        let strip = state_strip(&log, Timestamp(1_000_000));
        assert_eq!(strip.matches("<rect").count(), STRIP_CHANGES);
    }

    #[test]
    fn bars_have_axes_with_the_scale_and_a_list_of_values_for_screen_readers() {
        let chart = bars(
            "cost",
            &[("01".into(), 2.5, "day 1: $2.50".into()), ("02".into(), 0.0, "day 2: $0.00".into())],
            |v| format!("${v:.2}"),
        );
        assert_eq!(chart.matches("class=\"axis-line\"").count(), 2);
        assert!(chart.contains(">$2.50</text>") && chart.contains(">$0.00</text>"), "{chart}");
        assert!(
            chart.contains("<ul class=\"sr-only\"><li>day 1: $2.50</li><li>day 2: $0.00</li></ul>")
        );
    }
}
