//! What a shell command line runs and writes, as far as its text tells (no variable is
//! expanded, no script is read). [`simple_commands`] cuts a line into its simple commands, for
//! the approval rules: `command:` patterns are matched against each one's [`Simple::text`], and
//! `writes_outside_worktree` judges each one's [`Simple::writes`].
//!
//! A line is cut on `&&`, `||`, `;`, `&`, `|`, `|&`, `(`, `)` and newlines (outside quotes);
//! the commands inside `$(...)` and backquotes, and the line given to `sh|bash|zsh|dash|ksh -c`
//! and to `eval`, are cut the same way and listed too. Here-document bodies are skipped.

/// A word of the line, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The word as the shell would pass it (quotes and escapes removed).
    Path(String),
    /// A word holding an expansion (`$VAR`, `$(...)`, backquotes): what it names is unknown.
    Unknown,
}

/// One simple command of a line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Simple {
    /// The command's words joined by single spaces, without its leading `VAR=value`
    /// assignments, reserved words (`if`, `then`, `do`, `!`, `{`, ...), the wrappers
    /// `env` (with its options and assignments), `command`, `exec`, `nohup`, `time`, `nice`,
    /// `sudo` and `timeout` (with their options), the program's directory (`/usr/bin/git` is
    /// `git`), and git's global options before its subcommand (`-C DIR`, `-c KEY=VALUE`,
    /// `--git-dir=DIR`, `--no-pager`, ...).
    pub text: String,
    /// The files it writes, as far as its words tell (see [`writes`]).
    pub writes: Vec<Target>,
    /// Where it moves the shell: `cd DIR` or `pushd DIR` (`cd` alone is `~`).
    pub chdir: Option<Target>,
}

/// How deep `$(...)`, `sh -c` and `eval` are followed.
const MAX_NESTING: u8 = 8;

/// The simple commands of a shell command line, in order.
pub fn simple_commands(line: &str) -> Vec<Simple> {
    let mut out = Vec::new();
    collect(line, 0, &mut out);
    out
}

fn collect(line: &str, depth: u8, out: &mut Vec<Simple>) {
    if depth > MAX_NESTING {
        return;
    }
    let lexed = lex(line);
    let mut words: Vec<Word> = Vec::new();
    let mut redirected: Vec<Target> = Vec::new();
    let mut pending: Option<Redirect> = None;
    let finish = |words: &mut Vec<Word>, redirected: &mut Vec<Target>, out: &mut Vec<Simple>| {
        if !words.is_empty() || !redirected.is_empty() {
            // Before the commands of a line it runs itself.
            let at = out.len();
            let simple = simple(std::mem::take(words), std::mem::take(redirected), depth, out);
            // Reserved words alone (`fi`, `done`) are no command.
            if !(simple.text.is_empty() && simple.writes.is_empty()) {
                out.insert(at, simple);
            }
        }
    };
    for token in lexed.tokens {
        match token {
            Token::Word(word) => match pending.take() {
                Some(Redirect::Write) => redirected.push(word.target()),
                // `>&2`, `2>&1`, `>&-` duplicate a descriptor; `>& file` writes the file.
                Some(Redirect::Duplicate) => {
                    if !(word.known
                        && (word.text == "-" || word.text.bytes().all(|b| b.is_ascii_digit())))
                    {
                        redirected.push(word.target());
                    }
                }
                Some(Redirect::Other) => {}
                None => words.push(word),
            },
            Token::Redirect(kind) => pending = Some(kind),
            Token::Separator => {
                pending = None;
                finish(&mut words, &mut redirected, out);
            }
        }
    }
    finish(&mut words, &mut redirected, out);
    for nested in lexed.nested {
        collect(&nested, depth + 1, out);
    }
}

/// Builds a simple command from its words (and the targets of its write redirections); lines
/// it runs itself (`sh -c LINE`, `eval ...`) are added to `out`.
fn simple(words: Vec<Word>, redirected: Vec<Target>, depth: u8, out: &mut Vec<Simple>) -> Simple {
    let words = program(&words);
    let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    let mut writes = redirected;
    let mut chdir = None;
    if let Some((&name, args)) = texts.split_first() {
        let args_words = &words[1..];
        match name {
            "sh" | "bash" | "zsh" | "dash" | "ksh" => {
                // `-c LINE`, also as part of `-ec`, `-lc`...
                let at = args.iter().position(|a| {
                    a.starts_with('-') && !a.starts_with("--") && a[1..].contains('c')
                });
                if let Some(line) = at.and_then(|i| args.get(i + 1)) {
                    collect(line, depth + 1, out);
                }
            }
            "eval" => collect(&args.join(" "), depth + 1, out),
            "cd" | "pushd" => {
                chdir = Some(match args_words.iter().find(|w| !w.text.starts_with('-')) {
                    Some(dir) => dir.target(),
                    None if args.is_empty() => Target::Path("~".into()),
                    None => Target::Unknown, // `cd -`: wherever the shell was before
                });
            }
            _ => writes.extend(self::writes(name, args_words)),
        }
    }
    Simple { text: texts.join(" "), writes, chdir }
}

/// The words of a simple command from its program on: leading assignments, reserved words and
/// wrappers taken away, the program without its directory, git's global options taken away.
fn program(words: &[Word]) -> Vec<Word> {
    let mut rest = words;
    loop {
        rest = skip_assignments(rest);
        let Some((first, after)) = rest.split_first() else { return Vec::new() };
        let name = basename(&first.text);
        let skipped = match name {
            "!" | "{" | "}" | "if" | "then" | "else" | "elif" | "fi" | "do" | "done" | "while"
            | "until" => Some(after),
            "env" => {
                Some(options(after, &["-u", "--unset", "-C", "--chdir", "-S", "--split-string"]))
            }
            "command" | "nohup" | "time" | "builtin" => Some(options(after, &[])),
            "exec" => Some(options(after, &["-a"])),
            "nice" => Some(options(after, &["-n", "--adjustment"])),
            "sudo" | "doas" => Some(options(
                after,
                &[
                    "-u", "--user", "-g", "--group", "-h", "--host", "-p", "--prompt", "-C", "-D",
                    "-r", "-t", "-U", "-T",
                ],
            )),
            "timeout" => {
                let after = options(after, &["-s", "--signal", "-k", "--kill-after"]);
                Some(after.get(1..).unwrap_or_default()) // the duration
            }
            _ => None,
        };
        match skipped {
            Some(next) => rest = next,
            None => break,
        }
    }
    let Some((first, args)) = rest.split_first() else { return Vec::new() };
    let name = basename(&first.text).to_string();
    let args = if name == "git" {
        options(
            args,
            &[
                "-C",
                "-c",
                "--git-dir",
                "--work-tree",
                "--namespace",
                "--super-prefix",
                "--config-env",
            ],
        )
    } else {
        args
    };
    std::iter::once(Word { text: name, known: first.known }).chain(args.iter().cloned()).collect()
}

/// `words` without their leading `NAME=value` assignments.
fn skip_assignments(words: &[Word]) -> &[Word] {
    let count = words
        .iter()
        .take_while(|w| {
            w.text.split_once('=').is_some_and(|(name, _)| {
                let mut chars = name.chars();
                chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .count();
    &words[count..]
}

/// `words` after their leading options (`-x`, `--long`, `--long=value`, and the value of each
/// option of `with_value` given as a separate word; `--` ends them).
fn options<'a>(words: &'a [Word], with_value: &[&str]) -> &'a [Word] {
    let mut i = 0;
    while let Some(word) = words.get(i) {
        let text = word.text.as_str();
        if text == "--" {
            return &words[i + 1..];
        }
        if !text.starts_with('-') || text == "-" {
            break;
        }
        i += if with_value.contains(&text) { 2 } else { 1 };
    }
    words.get(i..).unwrap_or_default()
}

/// The operands of a command's arguments: the words that are not options nor the separate
/// value of an option of `with_value`.
fn operands<'a>(args: &'a [Word], with_value: &[&str]) -> Vec<&'a Word> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut ended = false;
    while let Some(word) = args.get(i) {
        let text = word.text.as_str();
        i += 1;
        if ended || !text.starts_with('-') || text == "-" {
            out.push(word);
        } else if text == "--" {
            ended = true;
        } else if with_value.contains(&text) {
            i += 1;
        }
    }
    out
}

/// The files a command writes, by its name and arguments: the file operands of `tee`,
/// `touch`, `mkdir`, `rm`, `rmdir`, `truncate`, `shred`, `install -d`, and of `sed -i` (after
/// its script); the destination of `cp`, `mv`, `ln`, `install` (the last operand, or the
/// `-t DIR`); `dd`'s `of=FILE`.
pub fn writes(name: &str, args: &[Word]) -> Vec<Target> {
    let all =
        |with_value: &[&str]| operands(args, with_value).into_iter().map(Word::target).collect();
    let has =
        |flag: &str| args.iter().any(|w| w.text == flag || w.text.starts_with(&format!("{flag}=")));
    match name {
        "tee" | "rm" | "rmdir" | "shred" => all(&[]),
        "touch" => all(&["-d", "-t", "-r"]),
        "mkdir" => all(&["-m"]),
        "truncate" => all(&["-s", "-r"]),
        "install" if has("-d") || has("--directory") => all(&["-m", "-o", "-g"]),
        "cp" | "mv" | "ln" | "install" => {
            let with_value = ["-t", "-S", "-m", "-o", "-g", "--suffix"];
            if let Some(dir) = args.iter().enumerate().find_map(|(i, w)| {
                match w.text.as_str() {
                    "-t" | "--target-directory" => args.get(i + 1),
                    _ => None,
                }
                .map(Word::target)
                .or_else(|| {
                    w.text
                        .strip_prefix("--target-directory=")
                        .or_else(|| w.text.strip_prefix("-t").filter(|d| !d.is_empty()))
                        .map(|d| if w.known { Target::Path(d.into()) } else { Target::Unknown })
                })
            }) {
                return vec![dir];
            }
            let operands = operands(args, &with_value);
            match operands.as_slice() {
                [_, .., last] => vec![last.target()],
                _ => Vec::new(),
            }
        }
        "dd" => args
            .iter()
            .filter_map(|w| {
                let file = w.text.strip_prefix("of=")?;
                Some(if w.known { Target::Path(file.into()) } else { Target::Unknown })
            })
            .collect(),
        "sed"
            if args
                .iter()
                .any(|w| w.text.starts_with("-i") || w.text.starts_with("--in-place")) =>
        {
            let scripted = args.iter().any(|w| {
                matches!(w.text.as_str(), "-e" | "-f" | "--expression" | "--file")
                    || w.text.starts_with("--expression=")
                    || w.text.starts_with("--file=")
            });
            let operands = operands(args, &["-e", "-f", "--expression", "--file", "-l"]);
            let files =
                if scripted { &operands[..] } else { operands.get(1..).unwrap_or_default() };
            files.iter().map(|w| w.target()).collect()
        }
        _ => Vec::new(),
    }
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// A word as the shell would pass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// No expansion (`$`, backquotes) in it: `text` is what the program gets.
    pub known: bool,
}

impl Word {
    fn target(&self) -> Target {
        if self.known {
            Target::Path(self.text.clone())
        } else {
            Target::Unknown
        }
    }
}

#[derive(Debug)]
enum Token {
    Word(Word),
    Separator,
    Redirect(Redirect),
}

/// A redirection operator; the next word is its target.
#[derive(Debug, Clone, Copy)]
enum Redirect {
    /// `>`, `>>`, `>|`, `&>`, `&>>`, `<>`: the target is written.
    Write,
    /// `>&`: a descriptor (`2`, `-`), or a file written.
    Duplicate,
    /// `<`, `<&`, `<<<`, a here-document's delimiter: nothing is written.
    Other,
}

struct Lexed {
    tokens: Vec<Token>,
    /// The text of each `$(...)` and backquoted command.
    nested: Vec<String>,
}

/// Cuts a line into words, separators and redirections, quote-aware.
fn lex(line: &str) -> Lexed {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = Vec::new();
    let mut nested = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut known = true;
    // Here-documents whose body starts after the next newline: (delimiter, strip tabs).
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut delimiter_next: Option<bool> = None;
    let mut i = 0;

    macro_rules! end_word {
        () => {
            if started {
                let text = std::mem::take(&mut word);
                match delimiter_next.take() {
                    Some(strip) => {
                        heredocs.push((text.clone(), strip));
                        tokens.push(Token::Word(Word { text, known }));
                    }
                    None => tokens.push(Token::Word(Word { text, known })),
                }
                started = false;
                known = true;
            }
        };
    }

    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                end_word!();
                i += 1;
            }
            '\n' => {
                end_word!();
                tokens.push(Token::Separator);
                i += 1;
                // Bodies of the here-documents begun on this line.
                for (delimiter, strip) in std::mem::take(&mut heredocs) {
                    while i < chars.len() {
                        let end = chars[i..]
                            .iter()
                            .position(|&c| c == '\n')
                            .map_or(chars.len(), |p| i + p);
                        let text: String = chars[i..end].iter().collect();
                        i = (end + 1).min(chars.len());
                        let text = if strip { text.trim_start_matches('\t') } else { &text };
                        if text == delimiter {
                            break;
                        }
                    }
                }
            }
            '#' if !started => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                if let Some(&next) = chars.get(i + 1) {
                    if next != '\n' {
                        word.push(next);
                        started = true;
                    }
                }
                i += 2;
            }
            '\'' => {
                started = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                started = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('$' | '`' | '"' | '\\' | '\n')) => {
                            if chars[i + 1] != '\n' {
                                word.push(chars[i + 1]);
                            }
                            i += 2;
                        }
                        '$' | '`' => {
                            known = false;
                            i = expansion(&chars, i, &mut word, &mut nested);
                        }
                        other => {
                            word.push(other);
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            '$' | '`' => {
                started = true;
                known = false;
                i = expansion(&chars, i, &mut word, &mut nested);
            }
            ';' | '|' | '(' | ')' => {
                end_word!();
                tokens.push(Token::Separator);
                i += 1;
                // `&&`, `||`, `;;`, `|&` are one separator.
                if matches!((c, chars.get(i)), ('|', Some('|' | '&')) | (';', Some(';'))) {
                    i += 1;
                }
            }
            '&' if chars.get(i + 1) == Some(&'>') => {
                end_word!();
                i += 2;
                if chars.get(i) == Some(&'>') {
                    i += 1;
                }
                tokens.push(Token::Redirect(Redirect::Write));
            }
            '&' => {
                end_word!();
                tokens.push(Token::Separator);
                i += if chars.get(i + 1) == Some(&'&') { 2 } else { 1 };
            }
            '>' | '<' => {
                // A word of digits right before it is the descriptor, not an argument.
                if started && known && !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
                {
                    word.clear();
                    started = false;
                }
                end_word!();
                let next = chars.get(i + 1).copied();
                let (kind, length) = match (c, next) {
                    ('>', Some('>' | '|')) => (Redirect::Write, 2),
                    ('>', Some('&')) => (Redirect::Duplicate, 2),
                    ('>', _) => (Redirect::Write, 1),
                    ('<', Some('>')) => (Redirect::Write, 2),
                    ('<', Some('&')) => (Redirect::Other, 2),
                    ('<', Some('<')) if chars.get(i + 2) == Some(&'<') => (Redirect::Other, 3),
                    ('<', Some('<')) => {
                        let strip = chars.get(i + 2) == Some(&'-');
                        delimiter_next = Some(strip);
                        (Redirect::Other, if strip { 3 } else { 2 })
                    }
                    _ => (Redirect::Other, 1),
                };
                tokens.push(Token::Redirect(kind));
                i += length;
            }
            other => {
                word.push(other);
                started = true;
                i += 1;
            }
        }
    }
    if started {
        tokens.push(Token::Word(Word { text: word, known }));
    }
    Lexed { tokens, nested }
}

/// Reads the expansion at `chars[at]` (`$name`, `${...}`, `$(...)`, `$((...))`, or a
/// backquoted command) into `word`; a command's text goes to `nested`. Returns the index after
/// it.
fn expansion(chars: &[char], at: usize, word: &mut String, nested: &mut Vec<String>) -> usize {
    let closing = |open: usize, opener: char, closer: char| {
        let mut depth = 0usize;
        let mut i = open;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) if c == '\\' => i += 1,
                Some(_) => {}
                None if c == '\\' => i += 1,
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == opener => depth += 1,
                None if c == closer => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                None => {}
            }
            i += 1;
        }
        chars.len()
    };
    word.push(chars[at]);
    if chars[at] == '`' {
        let end =
            chars[at + 1..].iter().position(|&c| c == '`').map_or(chars.len(), |p| at + 1 + p);
        nested.push(chars[at + 1..end].iter().collect());
        return end + 1;
    }
    match chars.get(at + 1) {
        Some('(') if chars.get(at + 2) == Some(&'(') => closing(at + 1, '(', ')') + 1,
        Some('(') => {
            let end = closing(at + 1, '(', ')');
            nested.push(chars[at + 2..end.max(at + 2)].iter().collect());
            end + 1
        }
        Some('{') => closing(at + 1, '{', '}') + 1,
        _ => at + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        simple_commands(line).into_iter().map(|s| s.text).collect()
    }

    fn written(line: &str) -> Vec<Target> {
        simple_commands(line).into_iter().flat_map(|s| s.writes).collect()
    }

    fn path(p: &str) -> Target {
        Target::Path(p.into())
    }

    #[test]
    fn a_line_is_cut_into_simple_commands_without_wrappers_or_gits_global_options() {
        let check = |line: &str, expected: &[&str]| assert_eq!(texts(line), expected, "{line:?}");
        check("git push origin main", &["git push origin main"]);
        check("  git push", &["git push"]);
        check("env git push", &["git push"]);
        check("env -i -u HOME A=1 git push", &["git push"]);
        check("VAR=1 B='x y' git push", &["git push"]);
        check("true && git push", &["true", "git push"]);
        check(
            "false || git push; ls | wc -l & git push",
            &["false", "git push", "ls", "wc -l", "git push"],
        );
        check("git -C dir push", &["git push"]);
        check("git -c user.name=x --no-pager --git-dir=.git push", &["git push"]);
        check("/usr/bin/git push", &["git push"]);
        check("echo hi\ngit push", &["echo hi", "git push"]);
        check("sudo -u root nice -n 5 nohup command git push", &["git push"]);
        check("timeout -s KILL 10 git push", &["git push"]);
        check("if true; then git push; fi", &["true", "git push"]);
        check("(cd x && git push)", &["cd x", "git push"]);
        check("echo $(git push) `git push`", &["echo $ `", "git push", "git push"]);
        check("bash -lc 'git push'", &["bash -lc git push", "git push"]);
        check("eval git push", &["eval git push", "git push"]);
        check("git commit -m 'a; git push' # git push", &["git commit -m a; git push"]);
        check("cat <<EOF\ngit push\nEOF\nls", &["cat", "ls"]);
        check("echo 'git push'", &["echo git push"]);
    }

    #[test]
    fn obvious_write_targets_are_found_and_descriptors_are_not() {
        let check =
            |line: &str, expected: &[Target]| assert_eq!(written(line), expected, "{line:?}");
        check("echo x > /tmp/out", &[path("/tmp/out")]);
        check("echo x>>/tmp/out 2>&1 >&2", &[path("/tmp/out")]);
        check("echo x 2>/tmp/err &>/tmp/both", &[path("/tmp/err"), path("/tmp/both")]);
        check("ls >& /tmp/all", &[path("/tmp/all")]);
        check("sort < in.txt", &[]);
        check("cat <<< x", &[]);
        check("ls | tee -a a.txt /tmp/b", &[path("a.txt"), path("/tmp/b")]);
        check("cp -r a b /tmp/dest", &[path("/tmp/dest")]);
        check("mv -t /tmp/dir a b", &[path("/tmp/dir")]);
        check("install -m 644 a /tmp/b", &[path("/tmp/b")]);
        check("touch -d now /tmp/t; mkdir -p /tmp/d", &[path("/tmp/t"), path("/tmp/d")]);
        check("rm -rf /tmp/x", &[path("/tmp/x")]);
        check("dd if=a of=/tmp/disk", &[path("/tmp/disk")]);
        check("sed -i 's/a/b/' /tmp/f", &[path("/tmp/f")]);
        check("sed -i -e 's/a/b/' /tmp/f", &[path("/tmp/f")]);
        check("sed 's/a/b/' /tmp/f", &[]);
        check("echo x > \"$OUT\"", &[Target::Unknown]);
        check("env A=1 sh -c 'echo x > /tmp/inner'", &[path("/tmp/inner")]);
        check("cat > 'a b.txt' <<'EOF'\nx > /tmp/no\nEOF", &[path("a b.txt")]);
        let cd = simple_commands("cd /tmp && cd && cd -");
        let moves: Vec<_> = cd.iter().map(|s| s.chdir.clone()).collect();
        assert_eq!(moves, [Some(path("/tmp")), Some(path("~")), Some(Target::Unknown)]);
    }
}
