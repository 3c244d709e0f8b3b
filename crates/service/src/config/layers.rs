//! The layers a role's raw values come from: built-in defaults, `config/default.toml`,
//! `config/<role>.toml`, then the environment.

use super::*;

/// The known variables present in the process environment.
pub fn process_env() -> HashMap<String, String> {
    settings_variables()
        .filter_map(|v| std::env::var(v.name).ok().map(|s| (v.name.to_string(), s)))
        .collect()
}

/// `CONFIG_DIR`, or `config` relative to the working directory.
pub fn config_dir() -> PathBuf {
    std::env::var_os("CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"))
}

/// The sources, lowest first: the role's defaults, `config/default.toml`,
/// `config/<role>.toml`, the environment. Files and environment use the flat variable names
/// (lower case in files); each value is placed at its variable's path in [`Settings`], where
/// serde reads it into `T`.
pub(super) fn load<T: serde::de::DeserializeOwned>(
    role: Role,
    env: &HashMap<String, String>,
    config_dir: &Path,
) -> Result<T, ConfigError> {
    use config::{Config, Environment, File, FileFormat};

    let mut flat = Config::builder();
    for file in ["default", role.name] {
        let path = config_dir.join(format!("{file}.toml"));
        flat = flat.add_source(File::from(path).format(FileFormat::Toml).required(false));
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| settings_variables().any(|v| v.name == k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let flat = flat
        .add_source(Environment::default().source(Some(env)))
        .build()
        .map_err(|_| file_error(role, config_dir))?;

    let mut nested = Config::builder();
    for v in settings_variables() {
        let key = v.key().unwrap_or(v.name);
        let fallback = match &v.default {
            Fallback::Absent(_) => None,
            Fallback::Fixed(value) => Some(value.to_string()),
            Fallback::PerRole { value, .. } => Some(value(role)),
        };
        let given = match flat.get_string(&v.name.to_lowercase()) {
            Ok(value) => Some(value),
            Err(config::ConfigError::NotFound(_)) => None,
            Err(_) => return Err(ConfigError::new(v.name, "must be a string or a number")),
        };
        if let Some(value) = given.or(fallback) {
            nested = nested
                .set_override(key, value.trim())
                .map_err(|e| ConfigError::new(v.name, e.to_string()))?;
        }
    }
    nested
        .build()
        .and_then(Config::try_deserialize)
        .map_err(named)
}

/// A loader error as one line naming the variable whose value it is about.
fn named(error: config::ConfigError) -> ConfigError {
    use config::ConfigError as E;
    fn inner(e: &E) -> String {
        match e {
            E::At { error, .. } => inner(error),
            E::Type {
                unexpected,
                expected,
                ..
            } => format!("{unexpected} is not {expected}"),
            other => other.to_string(),
        }
    }
    match &error {
        E::At { key: Some(key), .. } | E::Type { key: Some(key), .. } => {
            ConfigError::at(key, inner(&error))
        }
        other => ConfigError::new("CONFIG_DIR", inner(other)),
    }
}

/// Which configuration file does not parse, and where: one line that names the file and the
/// line, never the file's contents (they may hold secrets).
fn file_error(role: Role, config_dir: &Path) -> ConfigError {
    use config::{Config, File, FileFormat};
    for name in ["default", role.name] {
        let path = config_dir.join(format!("{name}.toml"));
        let parsed = Config::builder()
            .add_source(
                File::from(path.clone())
                    .format(FileFormat::Toml)
                    .required(false),
            )
            .build();
        if let Err(e) = parsed {
            let text = e.to_string();
            let line = text
                .split("line ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .filter(|n| !n.is_empty())
                .map(|n| format!(" at line {n}"))
                .unwrap_or_default();
            return ConfigError::new(
                "CONFIG_DIR",
                format!(
                    "{}: not valid TOML{line} (contents not shown)",
                    path.display()
                ),
            );
        }
    }
    ConfigError::new(
        "CONFIG_DIR",
        format!(
            "{}: the configuration files do not load",
            config_dir.display()
        ),
    )
}
