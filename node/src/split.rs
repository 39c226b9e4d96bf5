//! Splitting a task into sub-tasks (seed 001 D3 and D4): a deterministic heuristic over the
//! prompt's text, no model involved, so the same text always gives the same plan.
//!
//! - A numbered list (`1.`, `2)`, ...) of at least two items gives its items as the parts.
//! - Otherwise, ordering words at the start of a clause (`then`, `after that`, `afterwards`,
//!   `finally`, `next`) cut the prompt into ordered parts.
//! - Otherwise, a parallel keyword (`implement`, `create`, `build`, ...) starting a clause
//!   starts a part.
//!
//! Parts are ordered (each depends on the one before) when the prompt orders them (a cut at an
//! ordering word, or a numbered list in a prompt with sequential keywords); that needs no
//! length. Unordered parts are a plan only when the prompt is complex (at least `min_chars`
//! characters) and has more parallel keywords than sequential ones (seed 001 D3's
//! `can_parallelize`). Fewer than two parts: no plan.

use serde::Serialize;

use crate::config::SplitConfig;

/// One part of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub title: String,
    pub prompt: String,
    /// Indexes of earlier parts this one waits for.
    pub depends_on: Vec<usize>,
}

/// What the heuristic says of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The parts; empty when the task is not split.
    pub parts: Vec<Part>,
    /// Why (or why not), in words.
    pub reason: String,
    pub parallel_keywords: usize,
    pub sequential_keywords: usize,
    pub chars: usize,
}

/// Words that cut a prompt into ordered parts when they start a clause.
const ORDER_MARKERS: &[&str] = &["after that", "afterwards", "then", "finally", "next"];
/// Longest title of a part, in characters.
const TITLE_CHARS: usize = 80;

/// The plan for `prompt` under `config`.
pub fn plan(prompt: &str, config: &SplitConfig) -> Plan {
    let lower = prompt.to_lowercase();
    let parallel = count_words(&lower, &config.parallel_keywords);
    let sequential = count_words(&lower, &config.sequential_keywords);
    let chars = prompt.chars().count();
    let complex = chars >= config.min_chars;
    let can_parallelize = parallel > sequential && complex;
    let make = |parts: Vec<Part>, reason: String| Plan {
        parts,
        reason,
        parallel_keywords: parallel,
        sequential_keywords: sequential,
        chars,
    };
    let list = numbered_items(prompt);
    if list.len() >= 2 {
        let ordered = sequential > 0 || !can_parallelize;
        if ordered && sequential == 0 && !complex {
            return make(Vec::new(), "a short numbered list without ordering words".into());
        }
        let reason = format!(
            "a numbered list of {} items, {}",
            list.len(),
            if ordered { "in order" } else { "independent" }
        );
        return make(parts(list, ordered), reason);
    }
    let ordered_pieces = cut_at_clause_words(prompt, ORDER_MARKERS, true);
    if ordered_pieces.len() >= 2 {
        let reason = format!("{} parts in the order the prompt gives", ordered_pieces.len());
        return make(parts(ordered_pieces, true), reason);
    }
    if !can_parallelize {
        let reason = if !complex {
            format!("{chars} characters, under the {} of a complex task", config.min_chars)
        } else {
            format!("{parallel} parallel keywords against {sequential} sequential ones")
        };
        return make(Vec::new(), reason);
    }
    let pieces = cut_at_clause_words(prompt, &config.parallel_keywords, false);
    if pieces.len() < 2 {
        return make(Vec::new(), "no clause starts with a parallel keyword twice".into());
    }
    let reason = format!(
        "{} independent parts ({parallel} parallel keywords against {sequential} sequential ones, {chars} characters)",
        pieces.len()
    );
    make(parts(pieces, false), reason)
}

fn parts(pieces: Vec<String>, ordered: bool) -> Vec<Part> {
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Part {
            title: title_of(&prompt),
            depends_on: if ordered && i > 0 { vec![i - 1] } else { Vec::new() },
            prompt,
        })
        .collect()
}

/// The first line of a part, cut to [`TITLE_CHARS`] characters on a word boundary.
fn title_of(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("part");
    let line = line.trim_end_matches(['.', ',', ';', ':']);
    let mut title = String::new();
    for word in line.split_whitespace() {
        if title.chars().count() + word.chars().count() + 1 > TITLE_CHARS {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    if title.is_empty() {
        title = line.chars().take(TITLE_CHARS).collect();
    }
    let mut chars = title.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Part".into(),
    }
}

/// How many times the keywords occur as whole words (a phrase as consecutive words).
fn count_words(lower: &str, keywords: &[String]) -> usize {
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .filter(|w| !w.is_empty())
        .collect();
    keywords
        .iter()
        .map(|k| {
            let phrase: Vec<String> =
                k.to_lowercase().split_whitespace().map(String::from).collect();
            if phrase.is_empty() {
                return 0;
            }
            words
                .windows(phrase.len())
                .filter(|w| w.iter().zip(&phrase).all(|(a, b)| a == b))
                .count()
        })
        .sum()
}

/// Items of a numbered list (`1.`, `2)` at the start of a line), each with the lines under it.
fn numbered_items(prompt: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut in_list = false;
    for line in prompt.lines() {
        let trimmed = line.trim_start();
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        let rest = &trimmed[digits..];
        if digits > 0 && (rest.starts_with(". ") || rest.starts_with(") ")) {
            items.push(rest[2..].trim().to_string());
            in_list = true;
        } else if in_list && !trimmed.is_empty() && line.starts_with([' ', '\t']) {
            if let Some(last) = items.last_mut() {
                last.push('\n');
                last.push_str(trimmed);
            }
        } else if !trimmed.is_empty() {
            in_list = false;
        }
    }
    items.retain(|i| !i.is_empty());
    items
}

/// The prompt cut before each clause that starts with one of `words` (a clause starts the
/// text or follows `,`, `;`, `.`, `:`, a line break or ` and `). `drop_word`: the word is an
/// ordering marker, left out of the part it starts. Empty pieces are dropped.
fn cut_at_clause_words(prompt: &str, words: &[impl AsRef<str>], drop_word: bool) -> Vec<String> {
    let lower = prompt.to_lowercase();
    // Byte offsets are shared only when lowercasing kept every length (ASCII-like text).
    if lower.len() != prompt.len() {
        return vec![prompt.trim().to_string()];
    }
    let bytes = lower.as_bytes();
    let mut cuts: Vec<(usize, usize)> = Vec::new(); // (cut at, part starts at)
    let mut i = 0;
    while i < bytes.len() {
        let at_clause = clause_start(&lower, i);
        if let Some(start) = at_clause {
            let rest = &lower[start..];
            let found = words.iter().map(AsRef::as_ref).find(|w| {
                let w = w.to_lowercase();
                rest.starts_with(&w)
                    && rest[w.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric())
            });
            if let Some(word) = found {
                let body = if drop_word { start + word.len() } else { start };
                if start > 0 || !drop_word {
                    cuts.push((i, body));
                }
                i = start + word.len().max(1);
                continue;
            }
        }
        i += 1;
    }
    let mut pieces = Vec::new();
    let mut from = 0;
    for (cut, body) in cuts {
        if cut > from {
            pieces.push(clean(&prompt[from..cut]));
        }
        from = body;
    }
    pieces.push(clean(&prompt[from..]));
    pieces.retain(|p| p.chars().any(char::is_alphanumeric));
    pieces
}

/// Where the clause that begins at `i` starts its first word, when `i` begins one: the text's
/// start, or a separator (`,`, `;`, `.`, `:`, a line break, ` and `) followed by spaces.
fn clause_start(lower: &str, i: usize) -> Option<usize> {
    let skip_spaces = |from: usize| {
        from + lower[from..].len() - lower[from..].trim_start_matches([' ', '\t', '\n', '\r']).len()
    };
    if i == 0 {
        return Some(skip_spaces(0));
    }
    let rest = &lower[i..];
    for sep in [",", ";", ".", ":", "\n"] {
        if rest.starts_with(sep) {
            let after = skip_spaces(i + sep.len());
            let after = after + if lower[after..].starts_with("and ") { 4 } else { 0 };
            return Some(skip_spaces(after));
        }
    }
    if rest.starts_with(" and ") {
        return Some(skip_spaces(i + 5));
    }
    None
}

/// A part's text without the separators around it.
fn clean(text: &str) -> String {
    let text = text.trim().trim_matches([',', ';', ':']).trim();
    let text = text.strip_prefix("and ").unwrap_or(text).trim();
    text.trim_end_matches([',', ';']).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SplitConfig {
        SplitConfig::default()
    }

    /// Expected parts: titles and the indexes of the parts each waits for.
    type Parts = Vec<(&'static str, Vec<usize>)>;

    fn titles(plan: &Plan) -> Vec<(String, Vec<usize>)> {
        plan.parts.iter().map(|p| (p.title.clone(), p.depends_on.clone())).collect()
    }

    /// A seed-style prompt of `chars` characters: three parallel parts, padded.
    fn seed_prompt(chars: usize) -> String {
        let pad = "x".repeat(chars / 3);
        format!(
            "Implement the parser module {pad}, create the storage layer {pad}, build the web interface {pad}"
        )
    }

    #[test]
    fn splitting_follows_the_table() {
        let long = seed_prompt(2_500);
        let cases: Vec<(&str, String, Parts)> = vec![
            ("three parallel parts in a long prompt", long.clone(), vec![]),
            (
                "two ordered parts",
                "Do A, then B after A".into(),
                vec![("Do A", vec![]), ("B after A", vec![0])],
            ),
            ("a short prompt", "Fix the typo in the README".into(), vec![]),
            (
                "parallel keywords in a short prompt",
                "Implement A, create B, build C".into(),
                vec![],
            ),
            (
                "a numbered list with ordering words",
                "Steps:\n1. Write the schema\n2. Then migrate the data\n3. Remove the old table\n"
                    .into(),
                vec![
                    ("Write the schema", vec![]),
                    ("Then migrate the data", vec![0]),
                    ("Remove the old table", vec![1]),
                ],
            ),
            (
                "a short numbered list without ordering words",
                "1. Write the schema\n2. Migrate the data\n".into(),
                vec![],
            ),
            ("then at the start only", "Then do it".into(), vec![]),
            (
                "three ordered steps",
                "Add the column. Then backfill it; finally drop the old one".into(),
                vec![
                    ("Add the column", vec![]),
                    ("Backfill it", vec![0]),
                    ("Drop the old one", vec![1]),
                ],
            ),
        ];
        for (name, prompt, expected) in cases {
            let plan = plan(&prompt, &config());
            if name == "three parallel parts in a long prompt" {
                let got = titles(&plan);
                assert_eq!(got.len(), 3, "{name}: {plan:#?}");
                assert!(got[0].0.starts_with("Implement the parser module"), "{name}: {got:?}");
                assert!(got[1].0.starts_with("Create the storage layer"), "{name}: {got:?}");
                assert!(got[2].0.starts_with("Build the web interface"), "{name}: {got:?}");
                assert!(got.iter().all(|(_, d)| d.is_empty()), "{name}: {got:?}");
                continue;
            }
            let expected: Vec<(String, Vec<usize>)> =
                expected.into_iter().map(|(t, d)| (t.to_string(), d)).collect();
            assert_eq!(titles(&plan), expected, "{name}: {}", plan.reason);
        }
    }

    #[test]
    fn the_same_text_gives_the_same_plan() {
        for prompt in [seed_prompt(2_500), "Do A, then B after A".into(), "short".into()] {
            let first = plan(&prompt, &config());
            for _ in 0..20 {
                assert_eq!(plan(&prompt, &config()), first);
            }
        }
    }

    #[test]
    fn keyword_lists_come_from_the_configuration() {
        let mut config = config();
        config.parallel_keywords = vec!["port".into()];
        config.min_chars = 10;
        let plan = plan("Port the parser, port the lexer", &config);
        assert_eq!(plan.parts.len(), 2, "{plan:#?}");
        assert_eq!(plan.parts[1].title, "Port the lexer");
    }

    #[test]
    fn counting_matches_whole_words_and_phrases() {
        let lower = "then buildings depends on after-party; build then";
        let count =
            |k: &[&str]| count_words(lower, &k.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(count(&["then"]), 2);
        assert_eq!(count(&["build"]), 1);
        assert_eq!(count(&["depends on"]), 1);
    }
}
