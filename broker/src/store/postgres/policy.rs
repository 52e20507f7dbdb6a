//! [`PolicyStore`] on PostgreSQL: the latest text in `policies`, every
//! revision in `policy_revisions`. The revision is incremented by the
//! upsert itself, under the row's lock, so concurrent writers through
//! several replicas get distinct revisions; [`PolicyStore::put_policy_at`]
//! compares and sets it.

use tokio_postgres::Row;

use super::{backend, not_found, now_unix, PgStore};
use crate::store::policy::stale_revision;
use crate::store::{validate_name, PolicyStore, StoreError, StoredPolicy};

fn read_policy(r: &Row) -> StoredPolicy {
    StoredPolicy {
        name: r.get(0),
        revision: r.get(1),
        text: r.get(2),
        updated_at: r.get(3),
    }
}

impl PgStore {
    fn put_policy_inner(
        &self,
        name: &str,
        text: &str,
        base: Option<i64>,
    ) -> Result<i64, StoreError> {
        validate_name("policy name", name)?;
        let (name, text) = (name.to_owned(), text.to_owned());
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let now = now_unix();
                let current: Option<i64> = tx
                    .query_opt(
                        "SELECT revision FROM policies WHERE name = $1 FOR UPDATE",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| r.get(0));
                if let Some(base) = base {
                    let found = current.unwrap_or(0);
                    if found != base {
                        return Err(stale_revision(&name, base, found));
                    }
                }
                // A compare-and-set creation must not turn into an update
                // of a policy created meanwhile (there was no row to lock).
                let upsert = if base.is_some() && current.is_none() {
                    "INSERT INTO policies (name, revision, text, updated_at) \
                     VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING revision"
                } else {
                    "INSERT INTO policies (name, revision, text, updated_at) \
                     VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO UPDATE SET \
                     revision = policies.revision + 1, text = excluded.text, \
                     updated_at = excluded.updated_at RETURNING revision"
                };
                let Some(row) = tx
                    .query_opt(upsert, &[&name, &text, &now])
                    .await
                    .map_err(backend)?
                else {
                    return Err(stale_revision(&name, 0, 1));
                };
                let rev: i64 = row.get(0);
                tx.execute(
                    "INSERT INTO policy_revisions (name, revision, text, created_at) \
                     VALUES ($1, $2, $3, $4)",
                    &[&name, &rev, &text, &now],
                )
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(rev)
            })
        })
    }
}

impl PolicyStore for PgStore {
    fn put_policy(&self, name: &str, text: &str) -> Result<i64, StoreError> {
        self.put_policy_inner(name, text, None)
    }

    fn put_policy_at(&self, name: &str, text: &str, base_revision: i64) -> Result<i64, StoreError> {
        self.put_policy_inner(name, text, Some(base_revision))
    }

    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                Ok(c.query_opt(
                    "SELECT name, revision, text, updated_at FROM policies WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(backend)?
                .map(|r| read_policy(&r)))
            })
        })
    }

    fn get_policy_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                Ok(c.query_opt(
                    "SELECT name, revision, text, created_at FROM policy_revisions \
                         WHERE name = $1 AND revision = $2",
                    &[&name, &revision],
                )
                .await
                .map_err(backend)?
                .map(|r| read_policy(&r)))
            })
        })
    }

    fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                Ok(c.query(
                    "SELECT name, revision, text, updated_at FROM policies ORDER BY name",
                    &[],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(read_policy)
                .collect())
            })
        })
    }

    fn delete_policy(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                if tx
                    .query_opt("SELECT 1 FROM policies WHERE name = $1 FOR UPDATE", &[&name])
                    .await
                    .map_err(backend)?
                    .is_none()
                {
                    return Err(not_found("policy", &name));
                }
                let users: Vec<String> = tx
                    .query(
                        "SELECT name FROM volumes WHERE policy = $1 ORDER BY name",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "policy {name:?} is used by volume(s) {}; point them at another policy first",
                        users.join(", ")
                    )));
                }
                tx.execute("DELETE FROM policies WHERE name = $1", &[&name])
                    .await
                    .map_err(backend)?;
                tx.execute("DELETE FROM policy_revisions WHERE name = $1", &[&name])
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)
            })
        })
    }
}
