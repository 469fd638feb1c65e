//! Where a CSV error is, in the user's terms. Arrow's decoder says "column 2 at line 3": it
//! counts columns from 0 and lines from the start of the chunk it decodes (value errors from 0,
//! record-shape errors from 1). A large file is decoded in chunks, so the line must be moved to
//! the file's and the column named.

use arrow::error::ArrowError;

/// The line of an arrow CSV error (1-based, counted from the first line of the decoded chunk)
/// and its message with the column named; `None` for errors that name no line.
pub(crate) fn locate(error: &ArrowError, names: &[String]) -> Option<(u64, String)> {
    let name = |index: &str| {
        index
            .parse::<usize>()
            .ok()
            .and_then(|i| names.get(i))
            .map_or_else(|| format!("#{index}"), |n| format!("`{n}`"))
    };
    match error {
        ArrowError::ParseError(msg) => {
            if let Some(rest) = msg.strip_prefix("Error while parsing value '") {
                // `VALUE' as type 'TYPE' for column C at line L. Row data: '...'`
                let (value, rest) = rest.rsplit_once("' for column ")?;
                let (value, ty) = value.rsplit_once("' as type '")?;
                let (column, rest) = rest.split_once(" at line ")?;
                let line = leading_number(rest)?;
                return Some((
                    line + 1,
                    format!("value '{value}' of column {} is not a {ty}", name(column)),
                ));
            }
            // `Error parsing column C at line L: DETAIL`
            let rest = msg.strip_prefix("Error parsing column ")?;
            let (column, rest) = rest.split_once(" at line ")?;
            let (line, detail) = rest.split_once(": ")?;
            Some((line.parse::<u64>().ok()? + 1, format!("column {}: {detail}", name(column))))
        }
        ArrowError::CsvError(msg) => {
            if let Some(rest) = msg.strip_prefix("incorrect number of fields for line ") {
                // `L, expected E got G`
                let (line, rest) = rest.split_once(", expected ")?;
                let (expected, got) = rest.split_once(" got ")?;
                return Some((
                    line.parse().ok()?,
                    format!("{got} fields where the header has {expected}"),
                ));
            }
            // `Encountered unequal lengths between records on CSV file. Expected E records,
            // found G records at line L`
            let rest = msg.split_once("Expected ")?.1;
            let (expected, rest) = rest.split_once(" records, found ")?;
            let (got, line) = rest.split_once(" records at line ")?;
            Some((leading_number(line)?, format!("{got} fields where the header has {expected}")))
        }
        _ => None,
    }
}

fn leading_number(text: &str) -> Option<u64> {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["device_id", "timestamp", "a"].map(String::from).to_vec()
    }

    #[test]
    fn arrow_messages_become_chunk_lines_and_column_names() {
        let parse = ArrowError::ParseError(
            "Error while parsing value 'zz' as type 'Float64' for column 2 at line 3. Row data: '[1,t,zz]'"
                .into(),
        );
        assert_eq!(
            locate(&parse, &names()),
            Some((4, "value 'zz' of column `a` is not a Float64".into()))
        );
        let fields =
            ArrowError::CsvError("incorrect number of fields for line 3, expected 3 got 2".into());
        assert_eq!(locate(&fields, &names()), Some((3, "2 fields where the header has 3".into())));
        let unequal = ArrowError::CsvError(
            "Encountered unequal lengths between records on CSV file. Expected 3 records, found 2 records at line 7"
                .into(),
        );
        assert_eq!(locate(&unequal, &names()), Some((7, "2 fields where the header has 3".into())));
        let column = ArrowError::ParseError("Error parsing column 1 at line 0: bad date".into());
        assert_eq!(locate(&column, &names()), Some((1, "column `timestamp`: bad date".into())));
        assert_eq!(locate(&ArrowError::CsvError("other".into()), &names()), None);
        // A value holding the separators still parses; an unknown column index is shown as is.
        let odd = ArrowError::ParseError(
            "Error while parsing value 'x' as type 'y' as type 'Int64' for column 9 at line 0. Row data: ''".into(),
        );
        assert_eq!(
            locate(&odd, &names()),
            Some((1, "value 'x' as type 'y' of column #9 is not a Int64".into()))
        );
    }
}
