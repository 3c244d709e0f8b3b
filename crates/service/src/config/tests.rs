//! The configuration loader's tests: defaults, layering, every value's parsing and errors.

use super::*;

fn election() -> Role {
    system::find("election").unwrap()
}

fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load(election(), &env, Path::new("/nonexistent"))
}

#[test]
fn defaults_follow_the_role() {
    let s = load(&[]).unwrap();
    assert_eq!(s.mq.service_name, "election-service");
    assert_eq!(s.mq.queue, "election-service");
    assert_eq!(
        s.mq.bindings,
        [
            "agenda.election.create",
            "agenda.election.start",
            "voting.completed",
            "permission.granted",
            "permission.revoked"
        ]
    );
    assert_eq!(s.http.port, 8082);
    assert_eq!(s.database.url.expose(), "sqlite://data/election.db");
    assert_eq!(s.mq.queue_type, QueueType::Classic);
    assert!(s.auth.jwt_secret.is_none());
}

#[test]
fn environment_overrides_defaults() {
    let s = load(&[
        ("SERVICE_NAME", "el-2"),
        ("MQ_BINDINGS", " a.b , c.* ,"),
        ("HTTP_PORT", "9000"),
        ("MQ_RETRY_DELAYS", "100ms,2s"),
    ])
    .unwrap();
    assert_eq!(s.mq.queue, "el-2", "queue defaults to SERVICE_NAME");
    assert_eq!(s.mq.bindings, ["a.b", "c.*"]);
    assert_eq!(s.http.port, 9000);
    assert_eq!(
        s.mq.retry_delays,
        [Duration::from_millis(100), Duration::from_secs(2)]
    );
}

#[test]
fn bad_values_name_their_variable() {
    for (var, value) in [
        ("HTTP_PORT", "eighty"),
        ("MQ_PREFETCH", "0"),
        ("MQ_DELIVERY_LIMIT", "0"),
        ("MQ_TRUST", "trusting"),
        ("MQ_QUEUE_TYPE", "stream"),
        ("MQ_EXCHANGE_TYPE", "x-delayed"),
        ("MQ_EXCHANGE", " "),
        ("SHUTDOWN_GRACE", "later"),
        ("MQ_RETRY_DELAYS", "1s,soon"),
        ("AMQP_URL", "http://nope"),
        ("HTTP_ADDR", "localhost:80"),
        ("AUTH_JWT_SECRET", "short"),
        ("AUTH_JWT_SECRET", "   "),
        ("AUTH_JWT_SECRET", "0123456789012345678901234567890"),
        ("AUTH_LEEWAY", "1h"),
        ("CORS_ALLOWED_ORIGINS", "example.com"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_POOL_SIZE", "0"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_HEADER_TIMEOUT", "0s"),
        ("HTTP_WRITE_TIMEOUT", "0s"),
        ("HTTP_MAX_BODY_BYTES", "12"),
    ] {
        let err = load(&[(var, value)]).unwrap_err();
        assert_eq!(err.variable, var, "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}

#[test]
fn the_amqp_password_never_shows() {
    let s = load(&[("AMQP_URL", "amqp://bob:hunter2@rabbit:5673/prod")]).unwrap();
    let shown = format!("{} {:?} {:?}", s.mq.url, s.mq.url, s);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("amqp://bob:****@rabbit:5673/prod"),
        "{shown}"
    );
    let err = load(&[("AMQP_URL", "amqp://bob:hunter2@rabbit:notaport/x")]).unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn strict_mode_believes_only_each_events_producers() {
    use crate::events::EventType;
    let open = load(&[]).unwrap();
    assert!(crate::messaging::trust::trusts(
        &open.mq,
        EventType::PermissionGranted,
        None
    ));
    let strict = load(&[
        ("MQ_TRUST", "strict"),
        (
            "MQ_PRODUCERS",
            "permission=perm-user,meeting=meet-user,permission=py-helper",
        ),
    ])
    .unwrap();
    let t = EventType::PermissionGranted;
    assert!(crate::messaging::trust::trusts(
        &strict.mq,
        t,
        Some("perm-user")
    ));
    assert!(
        crate::messaging::trust::trusts(&strict.mq, t, Some("py-helper")),
        "a role listed twice"
    );
    assert!(
        !crate::messaging::trust::trusts(&strict.mq, t, Some("meet-user")),
        "meeting does not publish grants"
    );
    assert!(
        !crate::messaging::trust::trusts(&strict.mq, t, None),
        "no user_id, no trust"
    );
    assert!(crate::messaging::trust::trusts(
        &strict.mq,
        EventType::MeetingCreated,
        Some("meet-user")
    ));
    let defaults = load(&[("MQ_TRUST", "strict")]).unwrap();
    assert!(crate::messaging::trust::trusts(
        &defaults.mq,
        t,
        Some("permission-service")
    ));
    assert_eq!(
        load(&[("MQ_PRODUCERS", "treasury=x")])
            .unwrap_err()
            .variable,
        "MQ_PRODUCERS"
    );
}

#[test]
fn an_ingress_producer_is_known_by_its_own_exchange() {
    let s = load(&[
        ("MQ_EXCHANGE", "events"),
        ("MQ_PRODUCERS", "meeting=meeting-service,meeting=py-meeting"),
        ("MQ_INGRESS", "py-meeting"),
    ])
    .unwrap();
    assert_eq!(
        s.mq.ingress_exchange("py-meeting"),
        "events.from.py-meeting"
    );
    assert_eq!(
        crate::messaging::trust::ingress_sender(&s.mq, "events.from.py-meeting"),
        Some("py-meeting")
    );
    assert_eq!(
        crate::messaging::trust::ingress_sender(&s.mq, "events"),
        None
    );
    assert_eq!(
        crate::messaging::trust::ingress_sender(&s.mq, "events.from.meeting-service"),
        None
    );
    let not_a_producer = load(&[("MQ_INGRESS", "stranger")]).unwrap_err();
    assert_eq!(not_a_producer.variable, "MQ_INGRESS");
    let unnamable = load(&[
        ("MQ_PRODUCERS", "meeting=py meeting"),
        ("MQ_INGRESS", "py meeting"),
    ])
    .unwrap_err();
    assert_eq!(unnamable.variable, "MQ_INGRESS");
}

#[test]
fn a_cluster_is_several_nodes_tried_in_turn() {
    let s = load(&[(
        "AMQP_URL",
        "amqp://bob:hunter2@r1:5672/%2f, amqp://bob:hunter2@r2:5672/%2f,amqp://bob:hunter2@r3:5673/%2f",
    )])
    .unwrap();
    assert_eq!(s.mq.url.len(), 3);
    assert_eq!(s.mq.url.node(4).0, "amqp://bob:hunter2@r2:5672/%2f");
    let shown = s.mq.url.to_string();
    assert_eq!(
        shown,
        "amqp://bob:****@r1:5672/%2f,amqp://bob:****@r2:5672/%2f,amqp://bob:****@r3:5673/%2f"
    );
    let err = load(&[("AMQP_URL", "amqp://a@r1/%2f,http://r2")]).unwrap_err();
    assert_eq!(err.variable, "AMQP_URL");
}

#[test]
fn a_broken_file_is_named_with_its_line_never_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("election.toml"),
        "mq_exchange = \"ok\"\namqp_url = \"amqp://u:hunter2@h/%2f\nauth_jwt_secret = \"s3cr3t",
    )
    .unwrap();
    let err = Settings::load(election(), &HashMap::new(), dir.path()).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.variable, "CONFIG_DIR");
    assert!(
        text.contains("election.toml") && text.contains("line 2"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn files_are_layered_under_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default.toml"),
        "mq_exchange = \"from-default\"\nmq_prefetch = 7\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("election.toml"),
        "mq_exchange = \"from-role\"\n",
    )
    .unwrap();
    let env = HashMap::from([("MQ_PREFETCH".to_string(), "9".to_string())]);
    let s = Settings::load(election(), &env, dir.path()).unwrap();
    assert_eq!(s.mq.exchange, "from-role");
    assert_eq!(s.mq.prefetch, 9);
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let help = help();
    for v in VARIABLES {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(v.name))
            .unwrap_or_else(|| panic!("{} missing from --help", v.name));
        assert!(line.contains("[default: "), "{line}");
    }
    assert!(help.contains("[default: 8081 (meeting)") || help.contains("8081"));
}

#[test]
fn every_default_parses() {
    for role in system::ALL {
        let s = Settings::load(role, &HashMap::new(), Path::new("/nonexistent")).unwrap();
        assert_eq!(s.http.port, role.default_port);
        assert_eq!(s.mq.service_name, role.service_name());
    }
}

#[test]
fn the_documented_table_is_the_generated_one() {
    let doc = include_str!("../../../../docs/configuration.md");
    let table = markdown_table();
    assert!(
        doc.contains(&table),
        "docs/configuration.md's table is out of date; replace it with:\n{table}"
    );
}

#[test]
fn every_variable_lands_in_a_field_of_settings() {
    // Every variable set at once, the optional ones too: a table key that names no field
    // fails the load (the sections deny unknown fields).
    let s = load(&[
        ("MQ_QUEUE", "q"),
        ("MQ_PRODUCERS", "meeting=m,election=e"),
        ("MQ_INGRESS", "m"),
        ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("CORS_ALLOWED_ORIGINS", "https://a.example"),
        ("LIVE_API_ORIGINS", "meeting=:8081"),
    ])
    .unwrap();
    assert_eq!(s.mq.queue, "q");
    assert_eq!(s.mq.producers[1].role.name, "election");
    assert_eq!(s.mq.ingress, ["m"]);
    assert_eq!(s.live.api_origins[0].origin, ":8081");
    assert!(s.auth.jwt_secret.is_some());
    for v in VARIABLES {
        if let Some(key) = v.key() {
            assert_eq!(name_of(key), v.name, "{key}");
        }
    }
}

/// A variable's name is written once in Rust, in [`VARIABLES`]; everything else reaches
/// it through the table (tests excepted).
#[test]
fn each_variable_is_named_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = Vec::new();
    for dir in ["service/src", "app/src"] {
        collect_rs(&root.join(dir), &mut sources);
    }
    for v in VARIABLES {
        let literal = format!("\"{}\"", v.name);
        let sites: Vec<String> = sources
            .iter()
            .filter(|(path, _)| !path.ends_with("tests.rs"))
            .flat_map(|(path, text)| {
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                code.lines()
                    .filter(|line| line.contains(&literal))
                    .map(|line| format!("{}: {}", path.display(), line.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(sites.len(), 1, "{} is written {:?}", v.name, sites);
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
}
