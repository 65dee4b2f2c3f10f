//! How read commands print for people: aligned tables with a header,
//! `key  value` rows, and colour for status words, only when stdout is a
//! terminal and NO_COLOR is unset (or when `--color always` asks).

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::OnceLock;

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset or empty.
    #[default]
    Auto,
    /// Colour even into a pipe or a file.
    Always,
    /// No colour.
    Never,
}

/// What a coloured word means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// alive, up, ok.
    Good,
    /// suspect, assembling.
    Warn,
    /// dead, left, failed.
    Bad,
}

impl Tone {
    fn code(self) -> &'static str {
        match self {
            Tone::Good => "\x1b[32m",
            Tone::Warn => "\x1b[33m",
            Tone::Bad => "\x1b[31m",
        }
    }

    /// The tone of a status word cohort prints, if it has one.
    pub fn of(word: &str) -> Option<Tone> {
        match word {
            "alive" | "up" | "ok" | "committed" | "leader" => Some(Tone::Good),
            "suspect" | "assembling" | "candidate" => Some(Tone::Warn),
            "dead" | "left" | "failed" | "aborted" | "unknown" => Some(Tone::Bad),
            _ => None,
        }
    }
}

const RESET: &str = "\x1b[0m";

/// Whether this process colours its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

impl Style {
    /// No colour: what tests and pipes get.
    pub const PLAIN: Style = Style { color: false };
    #[cfg(test)]
    pub const COLOR: Style = Style { color: true };

    /// The style `choice` gives this process's stdout.
    pub fn detect(choice: ColorChoice) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style::decide(choice, std::io::stdout().is_terminal(), no_color)
    }

    fn decide(choice: ColorChoice, terminal: bool, no_color: bool) -> Style {
        Style {
            color: match choice {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => terminal && !no_color,
            },
        }
    }

    /// Sets the process's style once (`cli::run`); later calls change
    /// nothing.
    pub fn install(choice: ColorChoice) {
        let _ = STYLE.set(Style::detect(choice));
    }

    /// The process's style: plain until `install`.
    pub fn current() -> Style {
        STYLE.get().copied().unwrap_or(Style::PLAIN)
    }

    pub fn paint(self, text: &str, tone: Option<Tone>) -> String {
        match tone {
            Some(tone) if self.color && !text.is_empty() => {
                format!("{}{text}{RESET}", tone.code())
            }
            _ => text.to_string(),
        }
    }

    /// `word` in the colour of its meaning (alive green, suspect yellow,
    /// dead and left red, ...).
    pub fn status(self, word: &str) -> String {
        self.paint(word, Tone::of(word))
    }

    /// Every status word of `text` coloured (`alive -> dead`).
    pub fn statuses_in(self, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        text.split(' ')
            .map(|word| self.status(word))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The width of `text` on a terminal (one column a character: names and
/// addresses are ASCII, and a wide character must not break a row).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// One cell: its text, and the tone to paint it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    text: String,
    tone: Option<Tone>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            tone: None,
        }
    }

    /// A status word, coloured by its meaning.
    pub fn status(text: impl Into<String>) -> Cell {
        let text = text.into();
        let tone = Tone::of(&text);
        Cell { text, tone }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::plain(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::plain(text)
    }
}

/// Rows under a header, every column as wide as its widest cell, two
/// spaces between columns, no blanks at the end of a line.
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<C: Into<Cell>>(&mut self, cells: impl IntoIterator<Item = C>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn render(&self, style: Style) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        let header: Vec<Cell> = self
            .header
            .iter()
            .map(|h| Cell::plain(h.as_str()))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(&cell.text));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            // Cells after the last non-empty one would only be padding.
            let last = row.iter().rposition(|c| !c.text.is_empty());
            for (i, cell) in row.iter().enumerate().take(last.map_or(0, |l| l + 1)) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&style.paint(&cell.text, cell.tone));
                if Some(i) != last {
                    let pad = widths[i] - width(&cell.text);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines, the values in one column. A value's further lines
/// are printed as they are (indented by the caller).
pub fn key_values<K: AsRef<str>, V: AsRef<str>>(rows: &[(K, V)]) -> String {
    let key_width = rows
        .iter()
        .map(|(k, _)| width(k.as_ref()))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let (k, v) = (k.as_ref(), v.as_ref());
        let pad = key_width - width(k);
        let _ = writeln!(out, "{k}{}  {v}", " ".repeat(pad));
    }
    out
}

/// Pretty JSON on stdout: what `--format json` prints for one answer.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte offsets where each column of every line starts.
    fn starts(text: &str) -> Vec<Vec<usize>> {
        text.lines()
            .map(|line| {
                let b = line.as_bytes();
                (0..b.len())
                    .filter(|&i| b[i] != b' ' && (i == 0 || (i >= 2 && &b[i - 2..i] == b"  ")))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn columns_line_up_under_the_header() {
        let mut t = Table::new(&["NAME", "STATUS", "ROLES"]);
        t.row(["a-long-name", "alive", "http"])
            .row(["b", "dead", "-"]);
        let text = t.render(Style::PLAIN);
        assert_eq!(
            text,
            "NAME         STATUS  ROLES\na-long-name  alive   http\nb            dead    -\n"
        );
        let starts = starts(&text);
        assert!(starts.iter().all(|s| *s == starts[0]), "{text}");
    }

    #[test]
    fn no_trailing_blanks_and_empty_last_cells_are_left_out() {
        let mut t = Table::new(&["VOTER", "ADDRESS", ""]);
        t.row(["n1", "127.0.0.1:1", "leader"])
            .row(["n22", "127.0.0.1:2", ""]);
        assert_eq!(
            t.render(Style::PLAIN),
            "VOTER  ADDRESS\nn1     127.0.0.1:1  leader\nn22    127.0.0.1:2\n"
        );
        assert_eq!(Table::new(&["A", "B"]).render(Style::PLAIN), "A  B\n");
    }

    #[test]
    fn colour_does_not_move_columns() {
        let mut t = Table::new(&["NAME", "STATUS", "SINCE"]);
        t.row([
            Cell::plain("a"),
            Cell::status("alive"),
            Cell::plain("1s ago"),
        ])
        .row([
            Cell::plain("b"),
            Cell::status("suspect"),
            Cell::plain("2s ago"),
        ]);
        let coloured = t.render(Style::COLOR);
        assert!(coloured.contains("\x1b[32malive\x1b[0m"), "{coloured:?}");
        assert!(coloured.contains("\x1b[33msuspect\x1b[0m"), "{coloured:?}");
        let stripped = coloured
            .replace("\x1b[32m", "")
            .replace("\x1b[33m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, t.render(Style::PLAIN));
        assert!(!t.render(Style::PLAIN).contains('\x1b'));
    }

    #[test]
    fn status_words_have_their_colours() {
        let s = Style::COLOR;
        assert_eq!(s.status("alive"), "\x1b[32malive\x1b[0m");
        assert_eq!(s.status("suspect"), "\x1b[33msuspect\x1b[0m");
        assert_eq!(s.status("dead"), "\x1b[31mdead\x1b[0m");
        assert_eq!(s.status("left"), "\x1b[31mleft\x1b[0m");
        assert_eq!(s.status("n1"), "n1");
        assert_eq!(
            s.statuses_in("alive -> dead"),
            "\x1b[32malive\x1b[0m -> \x1b[31mdead\x1b[0m"
        );
        assert_eq!(Style::PLAIN.statuses_in("alive -> dead"), "alive -> dead");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_forced() {
        use ColorChoice::*;
        assert!(Style::decide(Auto, true, false).color);
        assert!(!Style::decide(Auto, false, false).color);
        assert!(!Style::decide(Auto, true, true).color);
        assert!(Style::decide(Always, false, true).color);
        assert!(!Style::decide(Never, true, false).color);
    }

    #[test]
    fn key_values_align_the_values() {
        assert_eq!(
            key_values(&[("key", "user:42"), ("replicaset", "s2")]),
            "key         user:42\nreplicaset  s2\n"
        );
        let empty: [(&str, &str); 0] = [];
        assert_eq!(key_values(&empty), "");
    }
}
