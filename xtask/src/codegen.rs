//! `cargo xtask codegen`: generates `SqlState` from PostgreSQL's `errcodes.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::pg;
use crate::Result;

/// Where the generated file lives, relative to the workspace root.
pub const OUTPUT: &str = "crates/aiopg-core/src/error/sqlstate.rs";

struct Code {
    /// Macro names without the `ERRCODE_` prefix; the first is the primary one.
    names: Vec<String>,
    /// The SQL-standard condition name, when errcodes.txt gives one.
    condition: Option<String>,
}

pub fn run(root: &Path, check: bool) -> Result<()> {
    let source = errcodes_path()?;
    let text = std::fs::read_to_string(&source)
        .map_err(|e| format!("reading {}: {e}", source.display()))?;
    let generated = rustfmt(&generate(&text)?)?;
    let out = root.join(OUTPUT);
    if check {
        let current = std::fs::read_to_string(&out).unwrap_or_default();
        if current != generated {
            // Minor releases add codes (15.20 added 22P07): a file generated from a newer
            // release than the one installed is current if it has every code, under every
            // name, that the installed errcodes.txt lists.
            let missing = missing_codes(&text, &current);
            if !missing.is_empty() {
                return Err(format!(
                    "{OUTPUT} is out of date (it lacks {}): run `cargo xtask codegen`",
                    missing.join(", ")
                )
                .into());
            }
            println!(
                "{OUTPUT} has every code of {} (it was generated from a newer release)",
                source.display()
            );
            return Ok(());
        }
        println!("{OUTPUT} is up to date");
        return Ok(());
    }
    std::fs::write(&out, generated).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("wrote {OUTPUT} from {}", source.display());
    Ok(())
}

/// The data lines of errcodes.txt, `SQLSTATE  E|W|S  ERRCODE_MACRO  [condition_name]`, as
/// (code, macro name without `ERRCODE_`, condition name); section headers and comments are
/// skipped.
fn data_lines(text: &str) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || fields[0].len() != 5 || !fields[2].starts_with("ERRCODE_") {
            return None;
        }
        let name = fields[2].trim_start_matches("ERRCODE_");
        Some((fields[0], name, fields.get(3).copied()))
    })
}

/// The codes (and names) of errcodes.txt `text` that the generated file `current` lacks.
fn missing_codes(text: &str, current: &str) -> Vec<String> {
    // rustfmt breaks long lines: compare without white space.
    let flat: String = current.split_whitespace().collect();
    let mut missing = Vec::new();
    for (code, name, _) in data_lines(text) {
        let parsed = format!("\"{code}\"=>Inner::E{code}");
        let constant = format!("pubconst{name}:SqlState=SqlState(Inner::E{code});");
        if !flat.contains(&parsed) || !flat.contains(&constant) {
            missing.push(format!("{code} {name}"));
        }
    }
    missing
}

fn errcodes_path() -> Result<PathBuf> {
    let share = pg::sharedir()?;
    let path = share.join("errcodes.txt");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: install the PostgreSQL server package (apt-get install postgresql)",
            path.display()
        )
        .into())
    }
}

/// Formats generated code the way `cargo fmt` would, so that the committed file passes
/// `cargo fmt --check` and `--check` here compares like with like.
fn rustfmt(code: &str) -> Result<String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running rustfmt: {e} (rustup component add rustfmt)"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(code.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err("rustfmt failed on the generated code".into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn generate(text: &str) -> Result<String> {
    let mut codes: BTreeMap<String, Code> = BTreeMap::new();
    for (code, name, condition) in data_lines(text) {
        let entry = codes.entry(code.to_string()).or_insert(Code {
            names: Vec::new(),
            condition: None,
        });
        entry.names.push(name.to_string());
        if entry.condition.is_none() {
            entry.condition = condition.map(str::to_string);
        }
    }
    if codes.len() < 100 {
        return Err("errcodes.txt looks truncated: fewer than 100 codes".into());
    }

    let mut o = String::new();
    o.push_str(
        "// Generated by `cargo xtask codegen` from PostgreSQL's errcodes.txt. Do not edit.\n\n\
         /// A SQLSTATE error code, as in PostgreSQL's \"Error Codes\" appendix.\n\
         ///\n\
         /// Compare against the constants (`SqlState::UNIQUE_VIOLATION`); codes this list does\n\
         /// not know (from a newer server) are kept as they were sent.\n\
         #[derive(Clone, PartialEq, Eq, Hash)]\n\
         pub struct SqlState(Inner);\n\n\
         #[derive(Clone, PartialEq, Eq, Hash)]\n\
         #[allow(non_camel_case_types)]\n\
         enum Inner {\n",
    );
    for code in codes.keys() {
        writeln!(o, "    E{code},").unwrap();
    }
    o.push_str("    Other(Box<str>),\n}\n\n");

    o.push_str(
        "impl SqlState {\n    \
         /// The `SqlState` for a five-character code.\n    \
         pub fn from_code(code: &str) -> SqlState {\n        \
         SqlState(match code {\n",
    );
    for code in codes.keys() {
        writeln!(o, "            \"{code}\" => Inner::E{code},").unwrap();
    }
    o.push_str(
        "            other => Inner::Other(other.into()),\n        })\n    }\n\n    \
         /// The five-character code.\n    \
         pub fn code(&self) -> &str {\n        \
         match &self.0 {\n",
    );
    for code in codes.keys() {
        writeln!(o, "            Inner::E{code} => \"{code}\",").unwrap();
    }
    o.push_str(
        "            Inner::Other(code) => code,\n        }\n    }\n\n    \
         /// The constant's name (`UNIQUE_VIOLATION`), or `None` for a code this list does not know.\n    \
         pub fn name(&self) -> Option<&'static str> {\n        \
         Some(match &self.0 {\n",
    );
    for (code, c) in &codes {
        writeln!(o, "            Inner::E{code} => \"{}\",", c.names[0]).unwrap();
    }
    o.push_str("            Inner::Other(_) => return None,\n        })\n    }\n");
    for (code, c) in &codes {
        for name in &c.names {
            let what = c.condition.as_deref().unwrap_or(name.as_str());
            writeln!(
                o,
                "\n    /// `{code}`: {what}\n    pub const {name}: SqlState = SqlState(Inner::E{code});"
            )
            .unwrap();
        }
    }
    o.push_str(
        "}\n\n\
         impl std::fmt::Debug for SqlState {\n    \
         fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {\n        \
         match self.name() {\n            \
         Some(name) => write!(f, \"SqlState({name}, {})\", self.code()),\n            \
         None => write!(f, \"SqlState({})\", self.code()),\n        \
         }\n    }\n}\n\n\
         impl std::fmt::Display for SqlState {\n    \
         fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {\n        \
         f.write_str(self.code())\n    }\n}\n",
    );
    Ok(o)
}
