//! Parsing crontab expressions into the `cron` crate's form, with positioned errors.

use std::fmt;

/// An expression that is not a valid schedule, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {expression:?}: {reason} (at column {column}{})", field.map(|f| format!(", {f} field")).unwrap_or_default())]
pub struct ScheduleError {
    /// The expression as written.
    pub expression: String,
    /// 1-based character column of the offending part.
    pub column: usize,
    /// The field the column falls in, when there is one.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub reason: String,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for values `min..`, if the field has them.
    names: &'static [&'static str],
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 0-7 as crontab has it: 0 and 7 are both Sunday.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};
const DOW_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The set of values a field matches, as a bit set, and whether it was written as `*`.
#[derive(Clone, Copy)]
struct Values {
    bits: u64,
    star: bool,
}

/// A parsed expression: the `cron` crate expressions whose union is the schedule, and whether
/// the hour field is a wildcard (then jobs also run in both passes of a repeated hour).
pub(crate) struct Parsed {
    pub(crate) cron_expressions: Vec<String>,
    pub(crate) every_hour: bool,
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.cron_expressions).finish()
    }
}

pub(crate) fn parse(expression: &str) -> Result<Parsed, ScheduleError> {
    let error = |column: usize, field: Option<&'static str>, reason: String| ScheduleError {
        expression: expression.to_owned(),
        column,
        field,
        reason,
    };
    let trimmed = expression.trim();
    let expanded = if let Some(name) = trimmed.strip_prefix('@') {
        match name.to_ascii_lowercase().as_str() {
            "hourly" => "0 * * * *",
            "daily" | "midnight" => "0 0 * * *",
            "weekly" => "0 0 * * 0",
            "monthly" => "0 0 1 * *",
            "yearly" | "annually" => "0 0 1 1 *",
            _ => {
                return Err(error(
                    first_column(expression),
                    None,
                    format!(
                        "unknown macro @{name}; use @hourly, @daily, @weekly, @monthly or @yearly"
                    ),
                ));
            }
        }
    } else {
        expression
    };
    let macro_column = first_column(expression);

    let tokens = split_fields(expanded);
    let specs: &[FieldSpec] = match tokens.len() {
        5 => &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        6 => &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
        0 => return Err(error(1, None, "empty expression".to_owned())),
        n => {
            return Err(error(
                1,
                None,
                format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found {n}"
                ),
            ));
        }
    };
    let mut values = Vec::with_capacity(6);
    for ((start, text), spec) in tokens.iter().zip(specs) {
        let parsed = parse_field(text, spec).map_err(|(offset, reason)| {
            // Columns point into what the operator wrote; a macro's expansion points at the macro.
            let column = if std::ptr::eq(expanded, expression) {
                start + offset + 1
            } else {
                macro_column
            };
            error(column, Some(spec.name), reason)
        })?;
        values.push(parsed);
    }
    if tokens.len() == 5 {
        values.insert(
            0,
            Values {
                bits: 1,
                star: false,
            },
        );
    }

    let [second, minute, hour, dom, month, dow] = [0, 1, 2, 3, 4, 5].map(|i| values[i]);
    let dow = Values {
        // Fold 7 into 0: both are Sunday.
        bits: (dow.bits & 0x7f) | ((dow.bits >> 7) & 1),
        star: dow.star,
    };
    let head = [
        render(second, &SECOND),
        render(minute, &MINUTE),
        render(hour, &HOUR),
    ]
    .join(" ");
    let month_text = render(month, &MONTH);
    let dow_text = if dow.star {
        "*".to_owned()
    } else {
        (0..7)
            .filter(|d| dow.bits & (1 << d) != 0)
            .map(|d| DOW_NAMES[d])
            .collect::<Vec<_>>()
            .join(",")
    };
    let dom_text = render(dom, &DAY_OF_MONTH);
    // Crontab: when both day fields are restricted, a day matching either one fires.
    let cron_expressions = if !dom.star && !dow.star {
        vec![
            format!("{head} {dom_text} {month_text} *"),
            format!("{head} * {month_text} {dow_text}"),
        ]
    } else {
        vec![format!("{head} {dom_text} {month_text} {dow_text}")]
    };
    Ok(Parsed {
        cron_expressions,
        every_hour: hour.star,
    })
}

/// 1-based column of the first non-blank character.
fn first_column(expression: &str) -> usize {
    expression.chars().take_while(|c| c.is_whitespace()).count() + 1
}

/// Splits on whitespace, keeping each field's character offset.
fn split_fields(expression: &str) -> Vec<(usize, &str)> {
    let mut fields = Vec::new();
    let mut start = None;
    for (i, (byte, c)) in expression.char_indices().enumerate() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some((i, byte)),
            (true, Some((col, from))) => {
                fields.push((col, &expression[from..byte]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some((col, from)) = start {
        fields.push((col, &expression[from..]));
    }
    fields
}

fn render(values: Values, spec: &FieldSpec) -> String {
    if values.star {
        return "*".to_owned();
    }
    (spec.min..=spec.max)
        .filter(|v| values.bits & (1 << v) != 0)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses one field; errors carry the character offset within the field.
fn parse_field(text: &str, spec: &FieldSpec) -> Result<Values, (usize, String)> {
    let mut bits = 0u64;
    let mut offset = 0;
    let star = text == "*";
    for part in text.split(',') {
        bits |= parse_part(part, spec).map_err(|(o, reason)| (offset + o, reason))?;
        offset += part.chars().count() + 1;
    }
    Ok(Values { bits, star })
}

fn parse_part(part: &str, spec: &FieldSpec) -> Result<u64, (usize, String)> {
    if part.is_empty() {
        return Err((0, "empty list element".to_owned()));
    }
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => {
            let at = range.chars().count() + 1;
            let step: u32 = step
                .parse()
                .map_err(|_| (at, format!("step {step:?} is not a whole number")))?;
            if step == 0 {
                return Err((at, "step must be at least 1".to_owned()));
            }
            (range, step)
        }
        None => (part, 1),
    };
    let (low, high) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((a, b)) = range.split_once('-') {
        let low = value(a, spec).map_err(|r| (0, r))?;
        let high = value(b, spec).map_err(|r| (a.chars().count() + 1, r))?;
        if low > high {
            return Err((
                0,
                format!("range {range} runs backwards; write it as a list instead"),
            ));
        }
        (low, high)
    } else {
        let v = value(range, spec).map_err(|r| (0, r))?;
        // `5/15` means from 5 to the end in steps of 15, as cronie has it.
        (v, if part.contains('/') { spec.max } else { v })
    };
    Ok((low..=high)
        .step_by(step as usize)
        .fold(0u64, |bits, v| bits | (1 << v)))
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if n < spec.min || n > spec.max {
            return Err(format!("{n} is out of range {}-{}", spec.min, spec.max));
        }
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|name| *name == lower) {
        return Ok(spec.min + u32::try_from(i).unwrap_or(0));
    }
    if spec.names.is_empty() {
        Err(format!("{text:?} is not a number"))
    } else {
        Err(format!(
            "{text:?} is neither a number {}-{} nor a name ({})",
            spec.min,
            spec.max,
            spec.names.join(", ")
        ))
    }
}
