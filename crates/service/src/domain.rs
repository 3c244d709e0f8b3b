//! The domain's closed sets — item kinds, statuses, election outcomes, meeting roles — as
//! enums. Each serialises as the lower-case word used on the wire and in the API, and is
//! stored as that word through sqlx's type mapping (a `TEXT` column on either store), so an
//! impossible state can be neither written nor read back.

use std::collections::BTreeMap;

/// A new id for anything this system names — a meeting, an item, an election, a ballot,
/// an event: a UUID version 7, whose leading 48 bits are the Unix time in milliseconds.
/// Ids minted one after another sort together, so each new row of a table keyed by them
/// lands on the last page of its index instead of a random one: a commit of many rows
/// writes a few pages, not one per row (docs/performance.md). The time a meeting was
/// created is no secret (the API shows it); what an id grants is decided by the grants,
/// never by the id being hard to guess.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Declares a text-backed enum: serde and sqlx both use the snake_case word.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word used on the wire, in the API and in the store.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;

            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownWord {
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str().to_string(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                word.parse()
                    .map_err(|e: $crate::domain::UnknownWord| format!("{word:?} is not {}", e.choices()).into())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A word that is not one of an enum's values; says which are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// The accepted words, in declaration order.
    pub expected: Vec<&'static str>,
}

impl UnknownWord {
    /// `"a" or "b"` / `"a", "b" or "c"`, for error messages.
    pub fn choices(&self) -> String {
        let quoted: Vec<String> = self.expected.iter().map(|w| format!("{w:?}")).collect();
        match quoted.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            Some((last, _)) => last.clone(),
            None => String::new(),
        }
    }
}

pub(crate) use word_enum;

word_enum! {
    /// What an agenda item is.
    ItemKind {
        Discussion = "discussion",
        Election = "election",
    }
}

word_enum! {
    /// An agenda item's life: `pending` → `open` → (`voting` for elections) → `done`.
    ItemStatus {
        Pending = "pending",
        Open = "open",
        Voting = "voting",
        Done = "done",
    }
}

word_enum! {
    /// An election's life: `nominating` → `voting` → `finalized`, or `cancelled`.
    ElectionStatus {
        Nominating = "nominating",
        Voting = "voting",
        Finalized = "finalized",
        Cancelled = "cancelled",
    }
}

word_enum! {
    /// A ballot is open for votes, then closed with its tally.
    BallotStatus {
        Open = "open",
        Closed = "closed",
    }
}

word_enum! {
    /// How an election ended.
    Outcome {
        /// The seats are filled: one candidate per seat, by most votes.
        Elected = "elected",
        /// Several candidates share the votes of the last seat; all of them are winners.
        Tie = "tie",
        /// The ballot closed without a vote.
        NoVotes = "no_votes",
        /// Started with no candidates: no ballot was held.
        Cancelled = "cancelled",
    }
}

word_enum! {
    /// A role a user holds on a meeting. Only `manager` exists: it may run the meeting.
    MeetingRole {
        Manager = "manager",
    }
}

/// The votes a tally counts (saturating: a forged tally cannot overflow it).
pub fn votes_counted(tally: &BTreeMap<String, u64>) -> u64 {
    tally.values().fold(0u64, |a, n| a.saturating_add(*n))
}

/// Who won `seats` seats, from a tally (each voter one vote): the `seats` candidates with the
/// most votes, in name order. When candidates share the votes of the last seat, every one of
/// them is a winner and the outcome is a tie; fewer candidates with votes than seats are all
/// elected.
pub fn decide(
    tally: &BTreeMap<String, u64>,
    votes_cast: u64,
    seats: u32,
) -> (Outcome, Vec<String>) {
    let mut counts: Vec<u64> = tally.values().copied().filter(|n| *n > 0).collect();
    if votes_cast == 0 || counts.is_empty() {
        return (Outcome::NoVotes, vec![]);
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let seats = (seats.max(1) as usize).min(counts.len());
    let cut = counts[seats - 1];
    let winners: Vec<String> = tally
        .iter()
        .filter(|(_, n)| **n >= cut)
        .map(|(c, _)| c.clone())
        .collect();
    let outcome = if winners.len() > seats {
        Outcome::Tie
    } else {
        Outcome::Elected
    };
    (outcome, winners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_serde() {
        for status in ElectionStatus::ALL {
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(
                serde_json::from_str::<ElectionStatus>(&json).unwrap(),
                *status
            );
        }
        assert_eq!(Outcome::NoVotes.as_str(), "no_votes");
        assert!(serde_json::from_str::<MeetingRole>("\"owner\"").is_err());
    }

    #[test]
    fn an_unknown_word_names_the_choices() {
        assert_eq!("election".parse::<ItemKind>(), Ok(ItemKind::Election));
        let err = "poll".parse::<ItemKind>().unwrap_err();
        assert_eq!(err.choices(), "\"discussion\" or \"election\"");
        let err = "x".parse::<ElectionStatus>().unwrap_err();
        assert_eq!(
            err.choices(),
            "\"nominating\", \"voting\", \"finalized\" or \"cancelled\""
        );
    }

    fn tally(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    #[test]
    fn one_leader_is_elected() {
        assert_eq!(
            decide(&tally(&[("ada", 2), ("bob", 1)]), 3, 1),
            (Outcome::Elected, vec!["ada".into()])
        );
    }

    #[test]
    fn a_shared_lead_is_a_tie_with_every_tied_candidate_winning() {
        assert_eq!(
            decide(&tally(&[("ada", 2), ("bob", 2), ("cy", 1)]), 5, 1),
            (Outcome::Tie, vec!["ada".into(), "bob".into()])
        );
    }

    #[test]
    fn no_votes_means_no_winner() {
        assert_eq!(
            decide(&tally(&[("ada", 0), ("bob", 0)]), 0, 3),
            (Outcome::NoVotes, vec![])
        );
        assert_eq!(decide(&BTreeMap::new(), 0, 1), (Outcome::NoVotes, vec![]));
    }

    #[test]
    fn three_seats_go_to_the_three_with_the_most_votes() {
        let board = tally(&[("ada", 4), ("bob", 1), ("cy", 3), ("dee", 2), ("eve", 0)]);
        assert_eq!(
            decide(&board, 10, 3),
            (
                Outcome::Elected,
                vec!["ada".into(), "cy".into(), "dee".into()]
            )
        );
    }

    #[test]
    fn a_tie_for_the_last_seat_names_everyone_in_it() {
        let board = tally(&[("ada", 4), ("bob", 2), ("cy", 3), ("dee", 2)]);
        assert_eq!(
            decide(&board, 11, 3),
            (
                Outcome::Tie,
                vec!["ada".into(), "bob".into(), "cy".into(), "dee".into()]
            )
        );
    }

    #[test]
    fn fewer_candidates_with_votes_than_seats_are_all_elected() {
        let board = tally(&[("ada", 4), ("bob", 0), ("cy", 1)]);
        assert_eq!(
            decide(&board, 5, 3),
            (Outcome::Elected, vec!["ada".into(), "cy".into()])
        );
    }
}
