//! The containment and reporting requests of the control socket: freeze, hold and
//! release, bulk quarantine selection, and the incident report. Every change is
//! committed in one store transaction with its audit record naming the admin (the
//! socket peer's user name from `SO_PEERCRED`).

use super::{ActionError, Control, Count, Request, Response};
use crate::audit::incident::{self, Incident};
use crate::audit::{AuditEvent, Kind};
use crate::freeze::{Freeze, FreezeEntry, FreezeState};
use crate::types::MessageId;
use serde::{Deserialize, Serialize};
use tracing::info;

/// What `phigate quarantine` does with the selected messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BulkAction {
    /// List the quarantined messages that match.
    List,
    /// Quarantine the pending messages that match (held for review by `admin`).
    Add,
    Release,
    Delete,
}

/// A row of a bulk selection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selected {
    pub id: MessageId,
    pub received_at: u64,
    pub identity: Option<String>,
}

impl Control {
    pub(super) async fn breach(&self, req: Request, admin: &str) -> Response {
        let res = match req {
            Request::Freeze {
                on,
                identity,
                all,
                reason,
                refuse_inbound,
            } => self
                .freeze(on, identity, all, reason, refuse_inbound, admin)
                .await
                .map(|s| Response::ok(&s)),
            Request::FreezeStatus => Ok(Response::ok(&self.services.freeze.state())),
            Request::QueueHold {
                release,
                id,
                identity,
                all,
            } => self
                .hold(release, id, identity, all, admin)
                .await
                .map(|c| Response::ok(&c)),
            Request::QuarantineSelect {
                action,
                identity,
                since,
                until,
            } => self
                .bulk(action, identity, since, until, admin)
                .await
                .map(|v| Response::ok(&v)),
            Request::AuditIncident { filter } => {
                self.incident(filter, admin).await.map(|v| Response::ok(&v))
            }
            _ => Err(ActionError::Usage("not a containment request".into())),
        };
        res.unwrap_or_else(|e| Response::err(e.to_string()))
    }

    /// Commit `state` with `events`, then put it in force and wake the queue.
    async fn store_state(
        &self,
        state: FreezeState,
        events: Vec<AuditEvent>,
    ) -> Result<(), ActionError> {
        let batch = self.services.attach(events);
        (self.services.spool)
            .commit_attached(vec![Freeze::op(&state)], &batch)
            .await?;
        self.services.freeze.applied(state);
        self.queue.wake();
        Ok(())
    }

    async fn freeze(
        &self,
        on: bool,
        identity: Option<String>,
        all: bool,
        reason: Option<String>,
        refuse_inbound: bool,
        admin: &str,
    ) -> Result<FreezeState, ActionError> {
        if on && (identity.is_some() == all) {
            return Err(ActionError::Usage(
                "freeze on: give exactly one of --identity or --all".into(),
            ));
        }
        let fz = &self.services.freeze;
        let _guard = fz.begin().await;
        let mut state = fz.state();
        let entry = FreezeEntry {
            admin: admin.to_string(),
            at: self.services.now(),
            reason: reason.clone().unwrap_or_default(),
            refuse_inbound,
        };
        let scope = match (&identity, all) {
            (Some(_), _) => "identity",
            (None, true) => "all",
            (None, false) => "everything",
        };
        if on {
            match &identity {
                Some(i) => {
                    state.identities.insert(i.clone(), entry);
                }
                None => state.all = Some(entry),
            }
        } else {
            match &identity {
                Some(i) => {
                    if state.identities.remove(i).is_none() {
                        return Err(ActionError::Usage(format!("identity `{i}` is not frozen")));
                    }
                }
                None if all => state.all = None,
                None => {
                    state.all = None;
                    state.identities.clear();
                }
            }
        }
        let mut ev = AuditEvent::new(Kind::Freeze)
            .field("action", if on { "on" } else { "off" })
            .field("scope", scope)
            .field("refuse_inbound", refuse_inbound)
            .person("admin", admin);
        if let Some(i) = &identity {
            ev = ev.person("identity", i.as_str());
        }
        if let Some(r) = &reason {
            // Free text typed by an admin: may name anyone, so sealed.
            ev = ev.person("reason", r.as_str());
        }
        self.store_state(state.clone(), vec![ev]).await?;
        let action = if on { "freeze_on" } else { "freeze_off" };
        (self.services.metrics).inc(crate::metrics::ADMIN_ACTIONS, &[("action", action)]);
        info!(admin, scope, on, refuse_inbound, "freeze changed");
        Ok(state)
    }

    /// Pending messages (not shredded, not finished) with their sending identity.
    fn pending_with_identity(&self) -> Result<Vec<Selected>, ActionError> {
        let spool = &self.services.spool;
        let mut out = Vec::new();
        for id in spool.pending()? {
            let Ok(env) = spool.envelope(&id) else {
                continue;
            };
            out.push(Selected {
                id,
                received_at: env.received_at,
                identity: env.auth.map(|a| a.to_string()),
            });
        }
        Ok(out)
    }

    async fn hold(
        &self,
        release: bool,
        id: Option<MessageId>,
        identity: Option<String>,
        all: bool,
        admin: &str,
    ) -> Result<Count, ActionError> {
        if [id.is_some(), identity.is_some(), all]
            .iter()
            .filter(|b| **b)
            .count()
            != 1
        {
            return Err(ActionError::Usage(
                "give exactly one of ID, --identity or --all".into(),
            ));
        }
        let fz = &self.services.freeze;
        let _guard = fz.begin().await;
        let mut state = fz.state();
        let ids: Vec<MessageId> = match (id, &identity) {
            (Some(id), _) => {
                self.services.spool.summary(&id)?;
                vec![id]
            }
            (None, Some(want)) if !release => self
                .pending_with_identity()?
                .into_iter()
                .filter(|s| s.identity.as_deref() == Some(want.as_str()))
                .map(|s| s.id)
                .collect(),
            (None, Some(want)) => {
                let held: Vec<MessageId> = state
                    .held
                    .keys()
                    .filter_map(|k| k.parse::<ulid::Ulid>().ok().map(MessageId))
                    .collect();
                held.into_iter()
                    .filter(|id| {
                        self.services
                            .spool
                            .envelope(id)
                            .ok()
                            .and_then(|e| e.auth)
                            .is_some_and(|a| a.to_string() == *want)
                    })
                    .collect()
            }
            (None, None) if !release => self
                .pending_with_identity()?
                .into_iter()
                .map(|s| s.id)
                .collect(),
            (None, None) => state
                .held
                .keys()
                .filter_map(|k| k.parse::<ulid::Ulid>().ok().map(MessageId))
                .collect(),
        };
        let mut events = Vec::new();
        for id in &ids {
            let changed = if release {
                state.held.remove(&id.to_string()).is_some()
            } else {
                let e = FreezeEntry {
                    admin: admin.to_string(),
                    at: self.services.now(),
                    reason: String::new(),
                    refuse_inbound: false,
                };
                state.held.insert(id.to_string(), e).is_none()
            };
            if changed {
                events.push(
                    AuditEvent::new(Kind::Hold)
                        .message(*id)
                        .field("action", if release { "release" } else { "hold" })
                        .person("admin", admin),
                );
            }
        }
        let count = events.len();
        if count > 0 {
            self.store_state(state, events).await?;
        }
        let action = if release { "release" } else { "hold" };
        (self.services.metrics).add(
            crate::metrics::ADMIN_ACTIONS,
            &[("action", action)],
            count as u64,
        );
        info!(admin, action, count, "queue hold changed");
        Ok(Count { count })
    }

    async fn bulk(
        &self,
        action: BulkAction,
        identity: Option<String>,
        since: Option<u64>,
        until: Option<u64>,
        admin: &str,
    ) -> Result<Vec<Selected>, ActionError> {
        let spool = &self.services.spool;
        let matches = |s: &Selected| {
            identity
                .as_ref()
                .is_none_or(|want| s.identity.as_deref() == Some(want.as_str()))
                && since.is_none_or(|t| s.received_at >= t)
                && until.is_none_or(|t| s.received_at < t)
        };
        let quarantined: std::collections::HashSet<MessageId> =
            spool.quarantined()?.into_iter().map(|(id, _)| id).collect();
        let selected: Vec<Selected> = self
            .pending_with_identity()?
            .into_iter()
            .filter(|s| matches(s) && (action == BulkAction::Add) != quarantined.contains(&s.id))
            .collect();
        for s in &selected {
            match action {
                BulkAction::List => {}
                BulkAction::Add => {
                    // The rule the spool records, so events and webhooks say why it is held.
                    let ev =
                        AuditEvent::admin(Kind::Quarantine, admin, s.id).field("rule", "admin");
                    let batch = self.services.attach(vec![ev]);
                    spool.quarantine_with(&s.id, "admin", &batch).await?;
                }
                BulkAction::Release => {
                    self.release(s.id, admin).await?;
                }
                BulkAction::Delete => {
                    self.delete(s.id, admin).await?;
                }
            }
        }
        if action != BulkAction::List {
            info!(admin, action = ?action, count = selected.len(), "bulk quarantine action");
        }
        Ok(selected)
    }

    /// Verify the chain, build the report, and record that it was produced (who, which
    /// filter, how many rows) before returning it.
    async fn incident(
        &self,
        filter: incident::IncidentFilter,
        admin: &str,
    ) -> Result<Incident, ActionError> {
        let audit = self.services.audit.clone();
        let spool = self.services.spool.clone();
        let f = filter.clone();
        let report = tokio::task::spawn_blocking(move || {
            let ring = spool.keyring();
            // Mail keeps flowing while the report is built: read no further than the
            // head as it was before the verification, so every row rests on it.
            let upto = audit.head().0;
            incident::verified_incident(spool.store().as_ref(), &ring, &f, Some(upto), || {
                audit.verify_quiesced(None)
            })
        })
        .await
        .map_err(|e| ActionError::Usage(e.to_string()))?
        .map_err(ActionError::Usage)?;
        self.services
            .audit
            .record(vec![incident_event(&filter, &report, admin)])
            .await?;
        info!(admin, rows = report.rows.len(), "incident report produced");
        Ok(report)
    }
}

/// The audit record of a report: the filter (identity and domain sealed) and its size.
pub fn incident_event(
    filter: &incident::IncidentFilter,
    report: &Incident,
    admin: &str,
) -> AuditEvent {
    let mut ev = AuditEvent::new(Kind::IncidentReport)
        .field("since_ms", filter.since_ms)
        .field("until_ms", filter.until_ms)
        .field("rule", filter.rule.clone())
        .field("detector", filter.detector.clone())
        .field("rows", report.rows.len() as u64)
        .field("messages", report.summary.messages)
        .person("admin", admin);
    if let Some(i) = &filter.identity {
        ev = ev.person("identity_filter", i.as_str());
    }
    if let Some(d) = &filter.recipient_domain {
        ev = ev.person("domain_filter", d.as_str());
    }
    ev
}
