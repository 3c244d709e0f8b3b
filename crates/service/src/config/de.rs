//! How the flat text of a variable becomes a typed field: serde helpers for the shapes the
//! variables share (a word of a fixed set, a comma-separated list, a list of durations).

use super::*;
use serde::de::Error;

/// A word of a fixed set ([`word_enum`]), with the choices in the error.
pub mod word {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: FromStr<Err = UnknownWord>,
    {
        let text = String::deserialize(d)?;
        let text = text.trim();
        text.parse()
            .map_err(|e: UnknownWord| D::Error::custom(format!("{text:?} is not {}", e.choices())))
    }
}

/// A comma-separated list; blanks between commas are skipped.
pub mod list {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: FromStr,
        T::Err: fmt::Display,
    {
        items(&String::deserialize(d)?)
            .map(|item| item.parse().map_err(D::Error::custom))
            .collect()
    }
}

/// A comma-separated list of `event_type=version` pins.
pub mod pins {
    use super::*;

    pub fn deserialize<'de, D>(d: D) -> Result<Pins, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let pins: Vec<Pin> = list::deserialize(d)?;
        let mut types: Vec<_> = pins.iter().map(|p| p.event_type).collect();
        types.sort();
        if let Some(twice) = types.windows(2).find(|w| w[0] == w[1]) {
            return Err(D::Error::custom(format!("{} is pinned twice", twice[0])));
        }
        Ok(pins.into_iter().collect())
    }
}

/// A comma-separated list of durations such as `1s,5s,30s`.
pub mod durations {
    use super::*;

    pub fn deserialize<'de, D>(d: D) -> Result<Vec<Duration>, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        items(&String::deserialize(d)?)
            .map(|item| {
                humantime::parse_duration(item).map_err(|_| {
                    D::Error::custom(format!(
                        "{item:?} is not a duration such as 500ms, 5s or 2m"
                    ))
                })
            })
            .collect()
    }
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}
