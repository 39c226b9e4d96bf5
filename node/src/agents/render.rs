//! An agent's output, its JSON events (Claude Code and Gemini CLI stream-json, Codex `--json`)
//! rendered as readable lines: what `ccm task logs` prints and the dashboard's task page shows.
//! Read leniently: an event of an unknown shape is skipped, a line that is not JSON is printed
//! as it is.

use serde_json::Value;

/// The readable lines of one line of agent output (none for events worth no line).
pub fn render(line: &str) -> Vec<String> {
    let trimmed = line.trim();
    let Some(event) =
        trimmed.starts_with('{').then(|| serde_json::from_str::<Value>(trimmed).ok()).flatten()
    else {
        return vec![line.to_string()];
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().trim().to_string();
    match event["type"].as_str().unwrap_or_default() {
        // Claude Code
        "system" if event["subtype"] == "init" => {
            vec![format!("session {} ({})", text(&event["session_id"]), text(&event["model"]))]
        }
        "assistant" => blocks(&event["message"]["content"])
            .filter_map(|b| match b["type"].as_str()? {
                "text" => Some(format!("assistant: {}", text(&b["text"]))),
                "tool_use" => Some(format!("→ {}{}", text(&b["name"]), target(&b["input"]))),
                _ => None,
            })
            .collect(),
        "user" => blocks(&event["message"]["content"])
            .filter(|b| b["type"] == "tool_result")
            .map(|b| {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => blocks(other).map(|c| text(&c["text"])).collect::<Vec<_>>().join(" "),
                };
                let mark = if b["is_error"] == true { "✗" } else { "←" };
                format!("  {mark} {}", first_line(&content))
            })
            .collect(),
        "result" if event.get("subtype").is_some() || event.get("total_cost_usd").is_some() => {
            let cost =
                event["total_cost_usd"].as_f64().map_or("unknown".into(), |c| format!("${c:.4}"));
            let outcome = if event["is_error"] == true { "error" } else { "done" };
            vec![format!(
                "{outcome}: {} turns, {:.1}s, cost {cost}{}",
                event["num_turns"],
                event["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                event["result"].as_str().map(|r| format!("\n{}", r.trim())).unwrap_or_default()
            )]
        }
        // Gemini CLI
        "message" if event["role"] == "assistant" => {
            vec![format!("assistant: {}", text(&event["content"]))]
        }
        "tool_use" => {
            vec![format!("→ {}{}", text(&event["tool_name"]), target(&event["parameters"]))]
        }
        "tool_result" => {
            vec![format!("  ← {} {}", text(&event["status"]), first_line(&text(&event["output"])))]
        }
        "result" => vec![format!(
            "done: {}, tokens {} in / {} out, cost unknown",
            text(&event["status"]),
            event["stats"]["input_tokens"],
            event["stats"]["output_tokens"]
        )],
        // Codex
        "item.completed" => {
            let item = &event["item"];
            match item["type"].as_str().unwrap_or_default() {
                "agent_message" => vec![format!("assistant: {}", text(&item["text"]))],
                "command_execution" => vec![
                    format!("→ {}", text(&item["command"])),
                    format!(
                        "  ← exit {} {}",
                        item["exit_code"],
                        first_line(&text(&item["aggregated_output"]))
                    ),
                ],
                "file_change" => {
                    let paths: Vec<String> =
                        blocks(&item["changes"]).map(|c| text(&c["path"])).collect();
                    vec![format!("→ edit {}", paths.join(" "))]
                }
                _ => Vec::new(),
            }
        }
        "turn.completed" => vec![format!(
            "turn done: tokens {} in / {} out, cost unknown",
            event["usage"]["input_tokens"], event["usage"]["output_tokens"]
        )],
        "turn.failed" | "error" => vec![format!(
            "error: {}",
            text(
                event["error"]["message"]
                    .as_str()
                    .map_or(&event["message"], |_| &event["error"]["message"])
            )
        )],
        _ => Vec::new(),
    }
}

fn blocks(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// What a tool call works on: its command, file, path, pattern or URL.
fn target(input: &Value) -> String {
    ["command", "file_path", "path", "absolute_path", "pattern", "url", "query"]
        .iter()
        .find_map(|key| input[key].as_str())
        .map_or(String::new(), |t| format!(" {}", first_line(t)))
}

/// The first line of `text`, at most 160 characters.
fn first_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn claude_stream_json_reads_as_text_tool_calls_results_and_cost() {
        let assistant = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Running tests"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"npm test"}}]}}"#;
        assert_eq!(render(assistant), ["assistant: Running tests", "→ Bash npm test"]);
        let user = r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"ok\nmore","is_error":false}]}}"#;
        assert_eq!(render(user), ["  ← ok"]);
        let result = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":2,"duration_ms":4460,"total_cost_usd":0.0123,"result":"Done."}"#;
        assert_eq!(render(result), ["done: 2 turns, 4.5s, cost $0.0123\nDone."]);
        assert!(render(r#"{"type":"stream_event","event":{}}"#).is_empty());
        assert_eq!(render("sh: 1: claude: not found"), ["sh: 1: claude: not found"]);
    }

    #[test]
    fn codex_and_gemini_events_read_as_text() {
        let command = r#"{"type":"item.completed","item":{"type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0}}"#;
        assert_eq!(render(command), ["→ bash -lc ls", "  ← exit 0 a.txt"]);
        let tool = r#"{"type":"tool_use","tool_name":"run_shell_command","tool_id":"t1","parameters":{"command":"ls"}}"#;
        assert_eq!(render(tool), ["→ run_shell_command ls"]);
    }
}
