//! The outbox relay benchmark: rows committed while `app meeting` was stopped, drained when
//! it starts.

use super::*;

/// The outbox relay as it ships, in an `app meeting` process: `n` rows committed to its
/// outbox while it was stopped, timed from the first to the last of them arriving on a tap
/// of the exchange (so process start-up is not counted).
pub(crate) async fn relay(
    base: &Settings,
    conn: &Connection,
    tag: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let dir = tempdir(&format!("{tag}-relay"))?;
    // A first start creates and migrates the store; the role is stopped before the rows go in.
    drop(spawn_role(base, &MEETING, tag, &dir).await?);
    let url = format!("sqlite://{}/{}.db", dir.display(), MEETING.name);
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let mut tx = pool.begin().await?;
    for i in 0..n {
        let env = Envelope::new(&sample_event(i), &MEETING.service_name());
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, producer, correlation_id, body, created_at_ms)
             VALUES (?, ?, ?, ?, ?, 0)",
        )
        .bind(&env.event_id)
        .bind(&env.event_type)
        .bind(&env.producer)
        .bind(&env.correlation_id)
        .bind(env.to_bytes())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pool.close().await;

    let ch = conn.create_channel().await?;
    let mut tap = topology::tap(&ch, &format!("{tag}-events"), &["meeting.created"]).await?;
    let role = spawn_role(base, &MEETING, tag, &dir).await?;
    let mut first = None;
    let mut seen = 0;
    while seen < n {
        let next = tokio::time::timeout(Duration::from_secs(60), tap.next())
            .await
            .context("the relay stalled")?;
        match next {
            Some(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            _ => bail!("the tap ended after {seen} of {n} events"),
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    drop(role);
    let _ = ch.close(200, "done".into()).await;
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

pub(crate) fn tempdir(tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
