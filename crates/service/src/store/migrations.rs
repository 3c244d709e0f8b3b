//! The migration tree: one SQL file per migration where both dialects take the same text
//! (`migrations/0002_inbox_body_hash.sql`), a file per dialect only where they differ
//! (`migrations/sqlite/0001_…` and `migrations/postgres/0001_…`). A file's name is its
//! version and description, as `sqlx migrate` has it, and its checksum is sqlx's.

use std::borrow::Cow;

use sqlx::migrate::{MigrationType, Migrator};

use super::Dialect;

/// One migration's file name (without `.sql`) and its SQL.
pub(crate) struct Migration {
    pub(crate) file: &'static str,
    pub(crate) sql: Sql,
}

/// A migration's SQL: the same for both dialects, or one text each.
pub(crate) enum Sql {
    Both(&'static str),
    PerDialect {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

/// A set of migrations in version order, with a version range of its own, and the folder
/// (relative to the crate) its files are in.
pub(crate) struct Migrations {
    pub(crate) dir: &'static str,
    pub(crate) list: &'static [Migration],
}

/// A migration of the tree at `$dir` (relative to the crate): `migration!(dir, "0002_x")`
/// reads `dir/0002_x.sql`; `migration!(dir, "0001_x", per_dialect)` reads
/// `dir/sqlite/0001_x.sql` and `dir/postgres/0001_x.sql`.
macro_rules! migration {
    ($dir:literal, $file:literal) => {
        $crate::store::Migration {
            file: $file,
            sql: $crate::store::MigrationSql::Both(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/",
                $dir,
                "/",
                $file,
                ".sql"
            ))),
        }
    };
    ($dir:literal, $file:literal, per_dialect) => {
        $crate::store::Migration {
            file: $file,
            sql: $crate::store::MigrationSql::PerDialect {
                sqlite: include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/",
                    $dir,
                    "/sqlite/",
                    $file,
                    ".sql"
                )),
                postgres: include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/",
                    $dir,
                    "/postgres/",
                    $file,
                    ".sql"
                )),
            },
        }
    };
}
pub(crate) use migration;

/// A set: `migrations!("dir", ["0001_x" => per_dialect, "0002_y"])`.
macro_rules! migrations {
    ($dir:literal, [$($file:literal $(=> $per:ident)?),* $(,)?]) => {
        $crate::store::Migrations {
            dir: $dir,
            list: &[$($crate::store::migration!($dir, $file $(, $per)?)),*],
        }
    };
}
pub(crate) use migrations;

/// The shared migrations every role's store starts with (outbox and inbox, versions 1–49).
pub(crate) static COMMON: Migrations = migrations!(
    "migrations",
    [
        "0001_outbox_inbox" => per_dialect,
        "0002_inbox_body_hash",
        "0003_outbox_trace_context",
        "0004_inbox_event_version",
    ]
);

impl Migration {
    /// The version: the file name's leading number.
    pub(crate) fn version(&self) -> i64 {
        let digits = self.file.split('_').next().unwrap_or_default();
        digits.parse().unwrap_or_default()
    }

    fn description(&self) -> String {
        self.file
            .split_once('_')
            .map_or("", |(_, rest)| rest)
            .replace('_', " ")
    }

    fn sql(&self, dialect: Dialect) -> &'static str {
        match (&self.sql, dialect) {
            (Sql::Both(sql), _) => sql,
            (Sql::PerDialect { sqlite, .. }, Dialect::Sqlite) => sqlite,
            (Sql::PerDialect { postgres, .. }, Dialect::Postgres) => postgres,
        }
    }
}

impl Migrations {
    /// sqlx's migrator of this set for `dialect`. The other sets' versions share the
    /// migrations table, so theirs are not "missing".
    pub(crate) fn migrator(&self, dialect: Dialect) -> Migrator {
        let migrations = self
            .list
            .iter()
            .map(|m| {
                sqlx::migrate::Migration::new(
                    m.version(),
                    Cow::Owned(m.description()),
                    MigrationType::Simple,
                    Cow::Borrowed(m.sql(dialect)),
                    false,
                )
            })
            .collect::<Vec<_>>();
        let mut migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator.set_ignore_missing(true);
        migrator
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every set the registry's roles use, once, with the folder its files are in.
    fn sets() -> Vec<(&'static str, &'static Migrations)> {
        let mut sets: Vec<_> = crate::roles::REGISTRY
            .iter()
            .flat_map(|b| b.migrations.iter().map(|set| (set.dir, *set)))
            .collect();
        sets.sort_by_key(|(dir, _)| *dir);
        sets.dedup_by_key(|(dir, _)| *dir);
        sets
    }

    #[test]
    fn every_file_of_the_tree_is_listed_once_and_in_version_order() {
        for (dir, set) in sets() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let mut files: Vec<String> = ["", "sqlite", "postgres"]
                .iter()
                .flat_map(|sub| std::fs::read_dir(root.join(sub)).into_iter().flatten())
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|name| name.strip_suffix(".sql").map(String::from))
                .collect();
            files.sort();
            files.dedup();
            let listed: Vec<&str> = set.list.iter().map(|m| m.file).collect();
            assert_eq!(files, listed, "{dir}");
            let versions: Vec<i64> = set.list.iter().map(Migration::version).collect();
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{dir}: {versions:?}"
            );
            assert!(versions.iter().all(|v| *v > 0), "{dir}: {versions:?}");
        }
    }

    #[test]
    fn a_file_per_dialect_only_where_the_sql_differs() {
        for (dir, set) in sets() {
            for m in set.list {
                if let Sql::PerDialect { sqlite, postgres } = m.sql {
                    assert_ne!(sqlite, postgres, "{dir}/{}: one file will do", m.file);
                }
            }
        }
    }
}
