//! Editing one list of a policy's TOML text in place (`measurements`,
//! `blocked_chip_ids`), so that comments and layout survive an
//! `allow-measurement` or `block-chip`. The edit is checked by parsing the
//! result: if the text has a layout this editor does not handle, or the
//! parsed list is not exactly the old one plus or minus the value, the
//! canonical form ([`Policy::to_toml`]) is edited instead and the caller is
//! told that comments were lost.

use std::collections::BTreeSet;

use super::PolicyList;
use crate::policy::Policy;

/// One change to a list of hex strings (lower-case hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListEdit<'a> {
    /// Append this value.
    Add(&'a str),
    /// Remove this value (compared case-insensitively).
    Remove(&'a str),
}

/// A string element of the array: byte span of the literal and its value.
struct Element {
    start: usize,
    end: usize,
    value: String,
}

/// An array: byte positions of its `[` and `]`, and its string elements.
type Array = (usize, usize, Vec<Element>);

/// The array of `key` at the top level of `text`. `None` when the key is
/// absent; `Some(Err(()))` when its value is not a plain array of basic or
/// literal strings on which this editor can work.
fn find_array(text: &str, key: &str) -> Option<Result<Array, ()>> {
    let mut offset = 0;
    let mut found = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break; // the first table: the key is not at the top level
        }
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                let eq = offset + (line.len() - trimmed.len()) + key.len();
                let eq = eq + rest.find('=').unwrap_or(0);
                found = Some(eq);
                break;
            }
        }
        offset += line.len();
    }
    let eq = found?;
    Some(parse_array(text, eq + 1).ok_or(()))
}

fn parse_array(text: &str, from: usize) -> Option<Array> {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let open = i;
    i += 1;
    let mut elements = Vec::new();
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' | b',' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b']' => return Some((open, i, elements)),
            q @ (b'"' | b'\'') => {
                let start = i;
                i += 1;
                let mut value = String::new();
                while i < b.len() && b[i] != q {
                    if b[i] == b'\n' || (q == b'"' && b[i] == b'\\') {
                        return None; // escapes, multi-line strings: not handled here
                    }
                    value.push(b[i] as char);
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                elements.push(Element {
                    start,
                    end: i,
                    value,
                });
            }
            _ => return None,
        }
    }
    None
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |p| p + 1)
}

fn line_end(text: &str, pos: usize) -> usize {
    text[pos..].find('\n').map_or(text.len(), |p| pos + p)
}

/// Edits `key`'s array in `text` in place; `None` if the layout is not one
/// this editor handles.
pub fn edit_string_list(text: &str, key: &str, edit: ListEdit<'_>) -> Option<String> {
    let Some(found) = find_array(text, key) else {
        // The key is absent: add it before the first table.
        let ListEdit::Add(v) = edit else {
            return None;
        };
        let at = text
            .split_inclusive('\n')
            .scan(0, |off, l| {
                let here = *off;
                *off += l.len();
                Some((here, l))
            })
            .find(|(_, l)| l.trim_start().starts_with('['))
            .map_or(text.len(), |(o, _)| o);
        let mut out = text[..at].to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{key} = [\"{v}\"]\n"));
        if at < text.len() {
            out.push('\n');
        }
        out.push_str(&text[at..]);
        return Some(out);
    };
    let (open, close, elements) = found.ok()?;
    let multiline = text[open..close].contains('\n');
    match edit {
        ListEdit::Add(v) => {
            let Some(last) = elements.last() else {
                return Some(format!("{}\"{v}\"{}", &text[..=open], &text[open + 1..]));
            };
            let close_on_last_line = line_end(text, last.end) > close;
            if !multiline || close_on_last_line {
                return Some(format!(
                    "{}, \"{v}\"{}",
                    &text[..last.end],
                    &text[last.end..]
                ));
            }
            let indent = &text[line_start(text, last.start)..last.start];
            if !indent.bytes().all(|c| c == b' ' || c == b'\t') {
                return None;
            }
            // After the last element's line (its comma and comment stay on it).
            let after = &text[last.end..line_end(text, last.end)];
            let trailing_comma = after.trim_start().starts_with(',');
            let eol = line_end(text, last.end);
            let mut out = String::with_capacity(text.len() + v.len() + 16);
            if trailing_comma {
                out.push_str(&text[..eol]);
                out.push_str(&format!("\n{indent}\"{v}\","));
            } else {
                out.push_str(&text[..last.end]);
                out.push(',');
                out.push_str(&text[last.end..eol]);
                out.push_str(&format!("\n{indent}\"{v}\""));
            }
            out.push_str(&text[eol..]);
            Some(out)
        }
        ListEdit::Remove(v) => {
            let idx = elements
                .iter()
                .position(|e| e.value.eq_ignore_ascii_case(v))?;
            let e = &elements[idx];
            let ls = line_start(text, e.start);
            let le = line_end(text, e.end);
            let before = &text[ls..e.start];
            let after = text[e.end..le].trim_start();
            let after = after.strip_prefix(',').unwrap_or(after).trim_start();
            let alone = multiline
                && before.trim().is_empty()
                && (after.is_empty() || after.starts_with('#'))
                && le < close;
            if alone {
                let end = (le + 1).min(text.len());
                return Some(format!("{}{}", &text[..ls], &text[end..]));
            }
            // Remove the element and the comma after it, or before it when last.
            let rest = &text[e.end..close];
            let ws = rest.len() - rest.trim_start().len();
            if rest.trim_start().starts_with(',') {
                let mut end = e.end + ws + 1;
                while end < close && text.as_bytes()[end] == b' ' {
                    end += 1;
                }
                return Some(format!("{}{}", &text[..e.start], &text[end..]));
            }
            let start = if idx == 0 {
                e.start
            } else {
                elements[idx - 1].end
            };
            Some(format!("{}{}", &text[..start], &text[e.end..]))
        }
    }
}

fn list_of(p: &Policy, list: PolicyList) -> BTreeSet<String> {
    match list {
        PolicyList::Measurements => p.measurements.iter().map(hex::encode).collect(),
        PolicyList::BlockedChips => p
            .blocked_chip_ids
            .iter()
            .map(|c| hex::encode(c.as_bytes()))
            .collect(),
    }
}

fn checked(text: &str, list: PolicyList, want: &BTreeSet<String>, old: &Policy) -> bool {
    let Ok(new) = Policy::from_toml(text) else {
        return false;
    };
    // Only the edited list may differ.
    let mut a = new.clone();
    let mut b = old.clone();
    match list {
        PolicyList::Measurements => {
            a.measurements.clear();
            b.measurements.clear();
        }
        PolicyList::BlockedChips => {
            a.blocked_chip_ids.clear();
            b.blocked_chip_ids.clear();
        }
    }
    a == b && &list_of(&new, list) == want
}

/// Neither the text nor the policy's canonical form could be edited so that
/// exactly the one list changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("could not edit {list} of this policy; edit the file and use `broker policy set`")]
pub struct EditError {
    /// The list's TOML key.
    pub list: &'static str,
}

/// Applies `edit` to the list of `policy` (parsed from `text`): in place
/// when possible, else on the canonical form. Returns the new text and
/// whether it was re-serialized.
pub fn apply(
    text: &str,
    list: PolicyList,
    edit: ListEdit<'_>,
    policy: &Policy,
) -> Result<(String, bool), EditError> {
    let mut want = list_of(policy, list);
    match edit {
        ListEdit::Add(v) => want.insert(v.to_ascii_lowercase()),
        ListEdit::Remove(v) => want.remove(&v.to_ascii_lowercase()),
    };
    if let Some(t) = edit_string_list(text, list.key(), edit) {
        if checked(&t, list, &want, policy) {
            return Ok((t, false));
        }
    }
    let canonical = policy.to_toml();
    match edit_string_list(&canonical, list.key(), edit) {
        Some(t) if checked(&t, list, &want, policy) => Ok((t, true)),
        _ => Err(EditError { list: list.key() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa";
    const B: &str = "bb";

    #[test]
    fn adds_to_single_and_multi_line_arrays_keeping_comments() {
        let t = "# head\nversion = 1\nmeasurements = [\"aa\"] # one\n\n[x]\ny = 1\n";
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Add(B)).unwrap(),
            "# head\nversion = 1\nmeasurements = [\"aa\", \"bb\"] # one\n\n[x]\ny = 1\n"
        );
        let t = "measurements = [\n  \"aa\", # image 1\n]\n";
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Add(B)).unwrap(),
            "measurements = [\n  \"aa\", # image 1\n  \"bb\",\n]\n"
        );
        let t = "measurements = [\n  \"aa\" # image 1\n]\n";
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Add(B)).unwrap(),
            "measurements = [\n  \"aa\", # image 1\n  \"bb\"\n]\n"
        );
        let t = "version = 1\n\n[min_tcb.milan]\n";
        assert_eq!(
            edit_string_list(t, "blocked_chip_ids", ListEdit::Add(A)).unwrap(),
            "version = 1\n\nblocked_chip_ids = [\"aa\"]\n\n[min_tcb.milan]\n"
        );
        let t = "blocked_chip_ids = []\n";
        assert_eq!(
            edit_string_list(t, "blocked_chip_ids", ListEdit::Add(A)).unwrap(),
            "blocked_chip_ids = [\"aa\"]\n"
        );
    }

    #[test]
    fn removes_elements_and_their_lines() {
        let t = "measurements = [\n  \"aa\", # image 1\n  \"BB\", # image 2\n]\n";
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Remove(A)).unwrap(),
            "measurements = [\n  \"BB\", # image 2\n]\n"
        );
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Remove(B)).unwrap(),
            "measurements = [\n  \"aa\", # image 1\n]\n"
        );
        let t = "measurements = [\"aa\", \"bb\"]\n";
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Remove(A)).unwrap(),
            "measurements = [\"bb\"]\n"
        );
        assert_eq!(
            edit_string_list(t, "measurements", ListEdit::Remove(B)).unwrap(),
            "measurements = [\"aa\"]\n"
        );
        assert!(edit_string_list(t, "measurements", ListEdit::Remove("cc")).is_none());
    }
}
