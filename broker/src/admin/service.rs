//! The `keybroker.admin.v1` gRPC adapter: authenticates the caller of each
//! request, turns messages into calls on [`Admin`] and results into
//! messages, and maps [`AdminError`] to a gRPC code in one place
//! ([`to_status`]). No logic lives here.

use std::sync::Arc;

use keybroker_proto::admin_pb as pb;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Response, Status};

use super::{Admin, AdminError, AdminErrorKind, Caller, ChainCheck, PolicyList, RotationState};
use crate::store::{AuditEntry, AuditFilter, KeyVersionRecord, StoredPolicy, VolumeRecord};

/// How callers of one listener are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Unix socket: the peer's uid must be one of these.
    UnixUids(Vec<u32>),
    /// TCP: a client certificate, already verified by the TLS layer.
    ClientCert,
}

/// Implementation of `keybroker.admin.v1.Admin`.
pub struct AdminService {
    admin: Arc<Admin>,
    auth: Auth,
}

impl AdminService {
    /// Serves `admin` to callers admitted by `auth`.
    pub fn new(admin: Arc<Admin>, auth: Auth) -> Self {
        AdminService { admin, auth }
    }

    /// Who is calling, or PERMISSION_DENIED.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match &self.auth {
            Auth::UnixUids(allowed) => {
                let Some(cred) = req
                    .extensions()
                    .get::<UdsConnectInfo>()
                    .and_then(|c| c.peer_cred)
                else {
                    return Err(Status::permission_denied(
                        "the admin socket could not read the caller's credentials; refused",
                    ));
                };
                let uid = cred.uid();
                if !allowed.contains(&uid) {
                    tracing::warn!(uid, pid = ?cred.pid(), "admin call refused: uid not allowed");
                    return Err(Status::permission_denied(format!(
                        "uid {uid} may not administer this broker; run the command as root or as \
                         the broker's user, or add {uid} to [admin] allowed_uids in the broker's \
                         config"
                    )));
                }
                Ok(Caller::Unix {
                    uid,
                    pid: cred.pid(),
                })
            }
            Auth::ClientCert => {
                let certs = req
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|c| c.peer_certs());
                let Some(cert) = certs.as_ref().and_then(|c| c.first()) else {
                    return Err(Status::permission_denied(
                        "the admin listener needs a client certificate signed by its client_ca",
                    ));
                };
                let subject = x509_parser::parse_x509_certificate(cert)
                    .map(|(_, c)| c.subject().to_string())
                    .unwrap_or_else(|_| "<unparsable subject>".into());
                Ok(Caller::Cert { subject })
            }
        }
    }
}

/// The one place an [`AdminError`] becomes a gRPC status.
pub fn to_status(e: AdminError) -> Status {
    let code = match e.kind {
        AdminErrorKind::NotFound => tonic::Code::NotFound,
        AdminErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        AdminErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        AdminErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        AdminErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        AdminErrorKind::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

fn volume_pb(v: &VolumeRecord) -> pb::Volume {
    pb::Volume {
        name: v.name.clone(),
        policy: v.policy.clone(),
        description: v.description.clone(),
        enabled: v.enabled,
        created_at: v.created_at,
        ..Default::default()
    }
}

/// A volume with its rotation state (VolumeList, VolumeShow).
fn volume_rotation_pb(v: &VolumeRecord, st: &RotationState) -> pb::Volume {
    pb::Volume {
        current_version: st.current.unwrap_or(0),
        pending_version: st.pending.map_or(0, |(p, _)| p),
        retired_versions: u32::try_from(st.retired.len()).unwrap_or(u32::MAX),
        rotation_state: st.to_string(),
        ..volume_pb(v)
    }
}

/// Version, state and times only: the sealed key never leaves the store.
fn key_pb(k: &KeyVersionRecord) -> pb::KeyVersion {
    pb::KeyVersion {
        version: k.version,
        state: k.state.as_str().to_owned(),
        created_at: k.created_at,
        retired_at: k.retired_at,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn policy_pb(p: &StoredPolicy, with_text: bool) -> pb::PolicyInfo {
    pb::PolicyInfo {
        name: p.name.clone(),
        revision: p.revision,
        updated_at: p.updated_at,
        text: if with_text {
            p.text.clone()
        } else {
            String::new()
        },
    }
}

fn audit_pb(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        id: e.id.0,
        at_unix: e.event.at_unix,
        kind: e.event.kind.clone(),
        verdict: e.event.verdict.clone(),
        volumes: e.event.volumes.clone(),
        reason_codes: e.event.reason_codes.clone(),
        details_json: e.event.details_json.clone(),
        client: e.event.client_addr.clone(),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
    }
}

type R<T> = Result<Response<T>, Status>;

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("admin task failed: {e}")))?
        .map_err(to_status)
}

impl AdminService {
    async fn edit(
        &self,
        req: Request<pb::PolicyListEditRequest>,
        list: PolicyList,
        add: bool,
    ) -> R<pb::PolicyListEditResponse> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let admin = self.admin.clone();
        let o = blocking(move || admin.policy_edit(&caller, &r.name, list, add, &r.value)).await?;
        Ok(Response::new(pb::PolicyListEditResponse {
            changed: o.changed,
            revision: o.revision,
            reformatted: o.reformatted,
        }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn volume_add(&self, req: Request<pb::VolumeAddRequest>) -> R<pb::VolumeAddResponse> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let admin = self.admin.clone();
        let v =
            blocking(move || admin.volume_add(&caller, &r.name, &r.policy, &r.description)).await?;
        Ok(Response::new(pb::VolumeAddResponse {
            volume: Some(volume_pb(&v)),
            key_version: 1,
        }))
    }

    async fn volume_list(&self, req: Request<pb::VolumeListRequest>) -> R<pb::VolumeListResponse> {
        self.caller(&req)?;
        let admin = self.admin.clone();
        let vs = blocking(move || admin.volume_list_with_rotation()).await?;
        Ok(Response::new(pb::VolumeListResponse {
            volumes: vs.iter().map(|(v, st)| volume_rotation_pb(v, st)).collect(),
        }))
    }

    async fn volume_show(&self, req: Request<pb::VolumeShowRequest>) -> R<pb::VolumeShowResponse> {
        self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        let (v, keys, st) = blocking(move || {
            let (v, keys) = admin.volume_show(&name)?;
            let st = admin.rotation_state(&name)?;
            Ok((v, keys, st))
        })
        .await?;
        Ok(Response::new(pb::VolumeShowResponse {
            volume: Some(volume_rotation_pb(&v, &st)),
            key_versions: keys.iter().map(key_pb).collect(),
        }))
    }

    async fn volume_rotate(
        &self,
        req: Request<pb::VolumeRotateRequest>,
    ) -> R<pb::VolumeRotateResponse> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        let (r, message) = blocking(move || {
            let r = admin.volume_rotate(&caller, &name)?;
            let message = r.next_steps(&name);
            Ok((r, message))
        })
        .await?;
        Ok(Response::new(pb::VolumeRotateResponse {
            pending_version: r.pending,
            current_version: r.current.unwrap_or(0),
            message,
        }))
    }

    async fn volume_cancel_rotation(
        &self,
        req: Request<pb::VolumeCancelRotationRequest>,
    ) -> R<pb::VolumeCancelRotationResponse> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        let cancelled_version =
            blocking(move || admin.volume_cancel_rotation(&caller, &name)).await?;
        Ok(Response::new(pb::VolumeCancelRotationResponse {
            cancelled_version,
        }))
    }

    async fn volume_purge_retired(
        &self,
        req: Request<pb::VolumePurgeRetiredRequest>,
    ) -> R<pb::VolumePurgeRetiredResponse> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let admin = self.admin.clone();
        let (purged, days) = blocking(move || {
            admin.volume_purge_retired(&caller, r.name.as_deref(), r.older_than_days)
        })
        .await?;
        Ok(Response::new(pb::VolumePurgeRetiredResponse {
            purged: purged
                .into_iter()
                .map(|p| pb::PurgedKeyVersion {
                    volume: p.volume,
                    version: p.version,
                    retired_at: p.retired_at,
                })
                .collect(),
            older_than_days: days,
        }))
    }

    type RotateMasterStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::RotateMasterProgress, Status>>;

    /// Runs the rotation on a blocking thread and streams its progress; a
    /// refusal (batch size 0, a rotation already running) or failure is the
    /// stream's error. If the client goes away, the rotation still runs to its end (and is
    /// audited): stopping halfway would leave `K.next` for the next run to
    /// finish, which is safe too, but finishing leaves nothing to resume.
    async fn rotate_master(
        &self,
        req: Request<pb::RotateMasterRequest>,
    ) -> R<Self::RotateMasterStream> {
        use pb::rotate_master_progress::Event;
        let caller = self.caller(&req)?;
        let batch_size = req.into_inner().batch_size;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut progress = |p: &crate::lifecycle::MasterProgress| {
                let msg = pb::RotateMasterProgress {
                    event: Some(Event::Batch(pb::RotateMasterBatch {
                        batch: p.batch,
                        resealed: p.resealed,
                        resealed_total: p.resealed_total,
                        total: p.resealed_total + p.remaining,
                        elapsed_ms: millis(p.elapsed),
                    })),
                };
                // A closed channel (the client left) is ignored: the
                // rotation goes on.
                let _ = tx.blocking_send(Ok(msg));
            };
            let last = match admin.rotate_master(&caller, batch_size, &mut progress) {
                Ok(done) => Ok(pb::RotateMasterProgress {
                    event: Some(Event::Done(pb::RotateMasterDone {
                        old_master_key_id: done.old.to_hex(),
                        new_master_key_id: done.new.to_hex(),
                        resealed: done.resealed,
                        batches: done.batches,
                        retired_file: done
                            .retired_file
                            .map(|f| f.display().to_string())
                            .unwrap_or_default(),
                        elapsed_ms: millis(done.elapsed),
                    })),
                }),
                Err(e) => Err(to_status(e)),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> R<pb::StatusResponse> {
        self.caller(&req)?;
        let admin = self.admin.clone();
        let st = blocking(move || admin.status()).await?;
        Ok(Response::new(pb::StatusResponse {
            master_key_id: st.master.current.to_hex(),
            master_key_generation: st.generation,
            next_master_key_id: st.master.next.map(|n| n.to_hex()),
            master_rotation_under_way: st.master.rotation_under_way(),
            master_keys: st
                .master
                .keys
                .iter()
                .map(|k| pb::MasterKeyInfo {
                    id: k.id.to_hex(),
                    role: match k.role {
                        crate::lifecycle::MasterKeyRole::Current => "current",
                        crate::lifecycle::MasterKeyRole::Next => "next",
                        crate::lifecycle::MasterKeyRole::Unloaded => "not-loaded",
                    }
                    .into(),
                    records: k.records,
                    retired: k.retired,
                })
                .collect(),
            pending_rotations: st
                .pending
                .into_iter()
                .map(|p| pb::PendingRotation {
                    volume: p.volume,
                    pending_version: p.pending,
                    current_version: p.current.unwrap_or(0),
                    since: p.since,
                })
                .collect(),
            retired_versions: st
                .retired
                .into_iter()
                .map(|(volume, r)| pb::RetiredKeyVersion {
                    volume,
                    version: r.version,
                    retired_at: r.retired_at,
                    kept_until: r.kept_until,
                })
                .collect(),
            retired_retention_days: super::keys::days(st.retired_retention),
            listeners: st
                .listeners
                .into_iter()
                .map(|l| pb::Listener {
                    kind: l.kind,
                    address: l.address,
                })
                .collect(),
        }))
    }

    async fn volume_set_enabled(
        &self,
        req: Request<pb::VolumeSetEnabledRequest>,
    ) -> R<pb::VolumeSetEnabledResponse> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let admin = self.admin.clone();
        let changed =
            blocking(move || admin.volume_set_enabled(&caller, &r.name, r.enabled)).await?;
        Ok(Response::new(pb::VolumeSetEnabledResponse { changed }))
    }

    async fn volume_delete(
        &self,
        req: Request<pb::VolumeDeleteRequest>,
    ) -> R<pb::VolumeDeleteResponse> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        blocking(move || admin.volume_delete(&caller, &name)).await?;
        Ok(Response::new(pb::VolumeDeleteResponse {}))
    }

    async fn policy_set(&self, req: Request<pb::PolicySetRequest>) -> R<pb::PolicySetResponse> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let admin = self.admin.clone();
        let revision = blocking(move || admin.policy_set(&caller, &r.name, &r.text)).await?;
        Ok(Response::new(pb::PolicySetResponse { revision }))
    }

    async fn policy_get(&self, req: Request<pb::PolicyGetRequest>) -> R<pb::PolicyGetResponse> {
        self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        let p = blocking(move || admin.policy_get(&name)).await?;
        Ok(Response::new(pb::PolicyGetResponse {
            policy: Some(policy_pb(&p, true)),
        }))
    }

    async fn policy_list(&self, req: Request<pb::PolicyListRequest>) -> R<pb::PolicyListResponse> {
        self.caller(&req)?;
        let admin = self.admin.clone();
        let ps = blocking(move || admin.policy_list()).await?;
        Ok(Response::new(pb::PolicyListResponse {
            policies: ps.iter().map(|p| policy_pb(p, false)).collect(),
        }))
    }

    async fn allow_measurement(
        &self,
        req: Request<pb::PolicyListEditRequest>,
    ) -> R<pb::PolicyListEditResponse> {
        self.edit(req, PolicyList::Measurements, true).await
    }

    async fn revoke_measurement(
        &self,
        req: Request<pb::PolicyListEditRequest>,
    ) -> R<pb::PolicyListEditResponse> {
        self.edit(req, PolicyList::Measurements, false).await
    }

    async fn block_chip(
        &self,
        req: Request<pb::PolicyListEditRequest>,
    ) -> R<pb::PolicyListEditResponse> {
        self.edit(req, PolicyList::BlockedChips, true).await
    }

    async fn unblock_chip(
        &self,
        req: Request<pb::PolicyListEditRequest>,
    ) -> R<pb::PolicyListEditResponse> {
        self.edit(req, PolicyList::BlockedChips, false).await
    }

    async fn audit_query(&self, req: Request<pb::AuditQueryRequest>) -> R<pb::AuditQueryResponse> {
        self.caller(&req)?;
        let r = req.into_inner();
        let filter = AuditFilter {
            volume: r.volume,
            since_unix: r.since_unix,
            until_unix: r.until_unix,
            verdict: r.verdict,
            kind: r.kind,
            ..AuditFilter::default()
        };
        let admin = self.admin.clone();
        let page = blocking(move || admin.audit_page(&filter, r.limit, r.after_id)).await?;
        Ok(Response::new(pb::AuditQueryResponse {
            entries: page.entries.iter().map(audit_pb).collect(),
            next_after_id: page.next_after_id,
        }))
    }

    async fn audit_verify(
        &self,
        req: Request<pb::AuditVerifyRequest>,
    ) -> R<pb::AuditVerifyResponse> {
        self.caller(&req)?;
        let admin = self.admin.clone();
        let check = blocking(move || admin.audit_verify()).await?;
        Ok(Response::new(match check {
            ChainCheck::Intact(n) => pb::AuditVerifyResponse {
                intact: true,
                entries: n,
                broken_at_id: 0,
                what: String::new(),
            },
            ChainCheck::Broken { at_id, what } => pb::AuditVerifyResponse {
                intact: false,
                entries: 0,
                broken_at_id: at_id,
                what,
            },
        }))
    }

    async fn audit_prune(&self, req: Request<pb::AuditPruneRequest>) -> R<pb::AuditPruneResponse> {
        let caller = self.caller(&req)?;
        let before = req.into_inner().before_unix;
        let admin = self.admin.clone();
        let out = blocking(move || admin.audit_prune(&caller, before)).await?;
        Ok(Response::new(pb::AuditPruneResponse {
            removed: out.removed,
            first_kept_id: out.first_kept,
            prune_entry_id: out.entry.map_or(0, |id| id.0),
        }))
    }

    async fn platforms(&self, req: Request<pb::PlatformsRequest>) -> R<pb::PlatformsResponse> {
        self.caller(&req)?;
        let admin = self.admin.clone();
        let inv = blocking(move || admin.platforms()).await?;
        Ok(Response::new(pb::PlatformsResponse {
            inventory_json: inv.json,
            skipped_policies: inv.skipped,
        }))
    }

    async fn get_volume_policy(
        &self,
        req: Request<pb::GetVolumePolicyRequest>,
    ) -> R<pb::GetVolumePolicyResponse> {
        self.caller(&req)?;
        let name = req.into_inner().name;
        let admin = self.admin.clone();
        let view = blocking(move || admin.volume_policy(&name)).await?;
        Ok(Response::new(pb::GetVolumePolicyResponse {
            volume: Some(volume_pb(&view.volume)),
            releasable_keys: view.keys.iter().map(key_pb).collect(),
            policy: view.policy.as_ref().map(|p| policy_pb(p, true)),
        }))
    }
}
