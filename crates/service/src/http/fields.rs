//! Validated body fields: the rule of a field is written once, in its type, which both reads
//! it (`Deserialize`) and describes it to the contract (`ToSchema`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

/// What serde puts before a value's own complaint; [`super::ApiJson`] answers such an error
/// 422 `invalid` rather than 400.
pub(crate) const INVALID_VALUE: &str = "invalid value: ";

/// The contract's pattern for [`Text`]: no control character anywhere, and not blank (white
/// space as ECMAScript's `\s` has it).
const PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// A required text of 1 to `MAX` characters without control characters, trimmed. The bound
/// and the character check apply to the text as sent (the contract's `maxLength` and
/// `pattern`); the value kept is trimmed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Text<const MAX: usize>(String);

/// A title: of a meeting, of an agenda item.
pub(crate) type Title = Text<200>;
/// A user's name as the tokens carry it.
pub(crate) type UserName = Text<200>;

impl<const MAX: usize> Text<MAX> {
    /// The text, or why it is not acceptable.
    pub(crate) fn new(value: &str) -> Result<Self, String> {
        if value.chars().count() > MAX {
            return Err(format!("must be at most {MAX} characters"));
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(value.to_string()))
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

impl<const MAX: usize> fmt::Display for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const MAX: usize> fmt::Debug for Text<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Self::new(&value).map_err(|reason| D::Error::custom(format!("{INVALID_VALUE}{reason}")))
    }
}

impl<const MAX: usize> utoipa::PartialSchema for Text<MAX> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .min_length(Some(1))
            .max_length(Some(MAX))
            .pattern(Some(PATTERN))
            .into()
    }
}

impl<const MAX: usize> utoipa::ToSchema for Text<MAX> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("Text{MAX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Result<String, String> {
        Title::new(value).map(Text::into_string)
    }

    #[test]
    fn a_text_is_held_to_the_contracts_bound_and_pattern_as_sent() {
        assert_eq!(text("  AGM ").unwrap(), "AGM");
        // The bound counts what was sent, spaces included (the contract's maxLength).
        assert!(text(&format!(" {}", "x".repeat(200))).is_err());
        assert!(text(&"x".repeat(200)).is_ok());
        // A control character anywhere, even where trimming would drop it, is refused.
        assert!(text("AGM\n").is_err());
        assert!(text("A\u{7}GM").is_err());
        // Blank as the pattern's `\s` has it, U+FEFF included.
        assert!(text(" \u{feff}\u{3000} ").is_err());
    }

    #[test]
    fn a_bad_text_is_an_invalid_value_in_the_body() {
        let err = serde_json::from_value::<Title>(serde_json::json!("  ")).unwrap_err();
        assert_eq!(err.to_string(), "invalid value: must not be empty");
    }
}
