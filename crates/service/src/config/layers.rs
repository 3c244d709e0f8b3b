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

pub(super) fn layered(
    role: Role,
    env: &HashMap<String, String>,
    config_dir: &Path,
) -> Result<HashMap<String, String>, ConfigError> {
    use config::{Config, Environment, File, FileFormat};

    let mut builder = Config::builder();
    for v in settings_variables() {
        let value = match &v.default {
            Default::Absent(_) => continue,
            Default::Fixed(value) => value.to_string(),
            Default::PerRole { value, .. } => value(role),
        };
        builder = builder
            .set_default(v.name.to_lowercase(), value)
            .map_err(|e| ConfigError::new(v.name, e.to_string()))?;
    }
    for file in ["default", role.name] {
        let path = config_dir.join(format!("{file}.toml"));
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(false));
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| settings_variables().any(|v| v.name == k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(Environment::default().source(Some(env)));
    let cfg = builder.build().map_err(|_| file_error(role, config_dir))?;

    let mut out = HashMap::new();
    for name in settings_variables().map(|v| v.name) {
        let key = name.to_lowercase();
        match cfg.get_string(&key) {
            Ok(value) => {
                out.insert(name.to_string(), value);
            }
            Err(config::ConfigError::NotFound(_)) => {}
            Err(_) => return Err(ConfigError::new(name, "must be a string or a number")),
        }
    }
    Ok(out)
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
