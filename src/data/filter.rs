//! The `-where` given to GDAL: parsed into a small grammar of comparisons on fields and written
//! out again by this server, so that what GDAL (and the driver under it: a VRT's source may be an
//! SQLite file with Spatialite loaded, or a database) receives holds only field names, quoted
//! values, numbers and a fixed set of operators. Comments, function calls, subqueries and
//! quoting tricks cannot survive the round trip: they do not parse.
//!
//! ```text
//! or      := and ("OR" and)*
//! and     := not ("AND" not)*
//! not     := "NOT" not | test
//! test    := sum ( op sum | ["NOT"] "LIKE" sum | ["NOT"] "IN" "(" sum ("," sum)* ")"
//!                | ["NOT"] "BETWEEN" sum "AND" sum | "IS" ["NOT"] "NULL" )?
//! sum     := product (("+" | "-" | "||") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := "-" unary | number | 'string' | field | "(" or ")"
//! field   := name | "quoted name"
//! op      := = | == | <> | != | < | <= | > | >=
//! ```

/// Longest filter accepted, in characters.
const MAX_LENGTH: usize = 10_000;
/// Deepest nesting of parentheses and `NOT`s.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Text(String),
    Number(String),
    Symbol(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                i += 1;
                if i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let number: String = chars[start..i].iter().collect();
            if number.parse::<f64>().is_err() {
                return Err(format!("{number:?} is not a number"));
            }
            out.push(Token::Number(number));
        } else if c == '\'' || c == '"' {
            // A quote inside is doubled, as SQL writes it.
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a quote is not closed".to_owned()),
                    Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) if other.is_control() => {
                        return Err("control characters are not allowed".to_owned());
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            out.push(if c == '\'' {
                Token::Text(value)
            } else {
                Token::Quoted(value)
            });
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let symbol = ["<>", "!=", "<=", ">=", "==", "||"]
                .into_iter()
                .find(|s| two == *s)
                .or_else(|| {
                    ["=", "<", ">", "(", ")", ",", "+", "-", "*", "/"]
                        .into_iter()
                        .find(|s| s.starts_with(c))
                });
            match symbol {
                Some(s) => {
                    i += s.len();
                    out.push(Token::Symbol(s));
                }
                None => return Err(format!("{c:?} is not allowed")),
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    out: String,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Symbol(s)) if *s == symbol)
    }

    fn word(&mut self, word: &str) -> bool {
        let found = self.peek_word(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        let found = self.peek_symbol(symbol);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), String> {
        if self.symbol(symbol) {
            Ok(())
        } else {
            Err(format!("expected {symbol:?}"))
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("nested too deeply".to_owned());
        }
        Ok(())
    }

    fn or(&mut self) -> Result<(), String> {
        self.and()?;
        while self.word("OR") {
            self.out.push_str(" OR ");
            self.and()?;
        }
        Ok(())
    }

    fn and(&mut self) -> Result<(), String> {
        self.not()?;
        while self.word("AND") {
            self.out.push_str(" AND ");
            self.not()?;
        }
        Ok(())
    }

    fn not(&mut self) -> Result<(), String> {
        if self.word("NOT") {
            self.deeper()?;
            self.out.push_str("NOT ");
            self.not()?;
            self.depth -= 1;
            return Ok(());
        }
        self.test()
    }

    fn test(&mut self) -> Result<(), String> {
        self.sum()?;
        for op in ["<>", "!=", "<=", ">=", "==", "=", "<", ">"] {
            if self.symbol(op) {
                self.out.push_str(match op {
                    "!=" => " <> ",
                    "==" => " = ",
                    other => match other {
                        "<>" => " <> ",
                        "<=" => " <= ",
                        ">=" => " >= ",
                        "=" => " = ",
                        "<" => " < ",
                        _ => " > ",
                    },
                });
                return self.sum();
            }
        }
        let negated = self.word("NOT");
        if negated {
            self.out.push_str(" NOT");
        }
        if self.word("LIKE") {
            self.out.push_str(" LIKE ");
            return self.sum();
        }
        if self.word("IN") {
            self.out.push_str(" IN (");
            self.expect_symbol("(")?;
            self.sum()?;
            while self.symbol(",") {
                self.out.push_str(", ");
                self.sum()?;
            }
            self.expect_symbol(")")?;
            self.out.push(')');
            return Ok(());
        }
        if self.word("BETWEEN") {
            self.out.push_str(" BETWEEN ");
            self.sum()?;
            if !self.word("AND") {
                return Err("BETWEEN needs AND".to_owned());
            }
            self.out.push_str(" AND ");
            return self.sum();
        }
        if negated {
            return Err("NOT must be followed by LIKE, IN or BETWEEN here".to_owned());
        }
        if self.word("IS") {
            self.out.push_str(" IS ");
            if self.word("NOT") {
                self.out.push_str("NOT ");
            }
            if !self.word("NULL") {
                return Err("IS must be followed by NULL or NOT NULL".to_owned());
            }
            self.out.push_str("NULL");
        }
        Ok(())
    }

    fn sum(&mut self) -> Result<(), String> {
        self.product()?;
        loop {
            let op = if self.symbol("+") {
                " + "
            } else if self.symbol("-") {
                " - "
            } else if self.symbol("||") {
                " || "
            } else {
                return Ok(());
            };
            self.out.push_str(op);
            self.product()?;
        }
    }

    fn product(&mut self) -> Result<(), String> {
        self.unary()?;
        loop {
            let op = if self.symbol("*") {
                " * "
            } else if self.symbol("/") {
                " / "
            } else {
                return Ok(());
            };
            self.out.push_str(op);
            self.unary()?;
        }
    }

    fn unary(&mut self) -> Result<(), String> {
        if self.symbol("-") {
            self.deeper()?;
            self.out.push('-');
            self.unary()?;
            self.depth -= 1;
            return Ok(());
        }
        if self.symbol("(") {
            self.deeper()?;
            self.out.push('(');
            self.or()?;
            self.expect_symbol(")")?;
            self.out.push(')');
            self.depth -= 1;
            return Ok(());
        }
        match self.tokens.get(self.at).cloned() {
            Some(Token::Number(n)) => self.out.push_str(&n),
            Some(Token::Text(t)) => {
                self.out.push('\'');
                self.out.push_str(&t.replace('\'', "''"));
                self.out.push('\'');
            }
            Some(Token::Word(w)) => {
                const RESERVED: &[&str] = &[
                    "and", "or", "not", "like", "in", "between", "is", "null", "select", "from",
                    "where",
                ];
                if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&w)) {
                    return Err(format!("{w} is not a field or a value here"));
                }
                self.push_field(&w);
            }
            Some(Token::Quoted(q)) => self.push_field(&q),
            Some(Token::Symbol(s)) => return Err(format!("unexpected {s:?}")),
            None => return Err("the filter ends too early".to_owned()),
        }
        self.at += 1;
        if self.peek_symbol("(") {
            return Err("functions are not allowed".to_owned());
        }
        Ok(())
    }

    fn push_field(&mut self, name: &str) {
        self.out.push('"');
        self.out.push_str(&name.replace('"', "\"\""));
        self.out.push('"');
    }
}

/// The filter as this server writes it, or why it does not parse.
///
/// # Errors
/// A message saying what is not allowed or malformed.
pub fn canonical(filter: &str) -> Result<String, String> {
    if filter.chars().count() > MAX_LENGTH {
        return Err(format!("longer than {MAX_LENGTH} characters"));
    }
    let mut parser = Parser {
        tokens: tokens(filter)?,
        at: 0,
        depth: 0,
        out: String::new(),
    };
    parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err("unexpected text after the filter".to_owned());
    }
    Ok(parser.out)
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn filters_on_fields_are_written_again() {
        for (filter, written) in [
            ("continent='Oceania'", "\"continent\" = 'Oceania'"),
            (
                "(pop_est > 5e6 OR name LIKE 'A%') AND NOT iso_a3 IN ('AUS', 'NZL')",
                "(\"pop_est\" > 5e6 OR \"name\" LIKE 'A%') AND NOT \"iso_a3\" IN ('AUS', 'NZL')",
            ),
            ("name = 'it''s'", "\"name\" = 'it''s'"),
            (
                "\"Shape Area\" BETWEEN 1 AND -2.5",
                "\"Shape Area\" BETWEEN 1 AND -2.5",
            ),
            (
                "a IS NOT NULL and b != 3",
                "\"a\" IS NOT NULL AND \"b\" <> 3",
            ),
            ("x NOT LIKE 'select (1)'", "\"x\" NOT LIKE 'select (1)'"),
        ] {
            assert_eq!(canonical(filter).as_deref(), Ok(written), "{filter}");
        }
    }

    #[test]
    fn anything_else_does_not_parse() {
        for filter in [
            "sqlite_version/**/() IS NOT NULL",
            "`sqlite_version`() IS NOT NULL",
            "[f](1) = 1",
            "f (1) = 1",
            "SqlProc_Execute(SqlProc_FromText('VACUUM INTO ''x'''))",
            "x IN (SELECT name FROM t)",
            "a = 1; DROP TABLE t",
            "a = 'unclosed",
            "a = \"b\"(1)",
            "",
        ] {
            assert!(canonical(filter).is_err(), "{filter} parsed");
        }
        assert!(canonical(&"(".repeat(100_000)).is_err());
        // A comment cannot survive: dashes are operators, written apart.
        let written = canonical("a = 1 -- comment").unwrap_or_default();
        assert!(!written.contains("--"), "{written}");
        assert!(canonical(&format!("{}a = 1{}", "(".repeat(70), ")".repeat(70))).is_err());
    }
}
